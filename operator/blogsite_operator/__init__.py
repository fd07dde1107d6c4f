"""blogsite-operator: runs a blog and its domains from one BlogSite resource."""
