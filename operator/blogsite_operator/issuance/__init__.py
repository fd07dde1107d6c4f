"""ACME certificates: the protocol (`protocol`) and the work queue that drives it (`issuer`)."""
