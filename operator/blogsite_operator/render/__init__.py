"""Pure renderers: a BlogSite (plus facts) in, the desired Kubernetes objects out.

Nothing in this package performs I/O; `render_site` is what the operator
applies and what `blogsite-operator render -f SITE.yaml` prints.
"""

from blogsite_operator.render.site import (
    COMPONENTS,
    Component,
    RenderSettings,
    SiteFacts,
    SiteRef,
    child_name,
    render_site,
    selector_labels,
)

__all__ = [
    "COMPONENTS",
    "Component",
    "RenderSettings",
    "SiteFacts",
    "SiteRef",
    "child_name",
    "render_site",
    "selector_labels",
]
