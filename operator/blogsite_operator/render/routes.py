"""The Gateway API routes of a site behind a shared Gateway (pure).

Port 80 by an HTTPRoute (every name: the site's nginx serves, redirects and
answers HTTP-01 challenges there as on its own Service); port 443 by a
TLSRoute in passthrough (the Gateway picks the site by SNI and forwards the
TLS connection untouched, so nginx presents the site's own certificate).
Both point at the site's frontend Service. TLSRoute is v1alpha2: the
version Gateway API v1.4 serves beside v1alpha3 and Traefik v3.6 reads.
"""

from __future__ import annotations

from typing import Any

from blogsite_operator import models

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE = "HTTPRoute"
TLS_ROUTE = "TLSRoute"
ROUTE_API_VERSIONS = {
    HTTP_ROUTE: f"{GATEWAY_GROUP}/v1",
    TLS_ROUTE: f"{GATEWAY_GROUP}/v1alpha2",
}
ROUTE_PLURALS = {HTTP_ROUTE: "httproutes", TLS_ROUTE: "tlsroutes"}
ROUTE_KINDS = (HTTP_ROUTE, TLS_ROUTE)


def parent_ref(
    namespace: str, gateway: models.GatewayAttachment, section: str | None
) -> dict[str, str]:
    """The Gateway (and listener, when named) a route asks to attach to."""
    ref = {
        "group": GATEWAY_GROUP,
        "kind": "Gateway",
        "namespace": gateway.namespace or namespace,
        "name": gateway.name,
    }
    if section is not None:
        ref["sectionName"] = section
    return ref


def _route(
    frontend: dict[str, Any],
    kind: str,
    gateway: models.GatewayAttachment,
    section: str | None,
    *,
    names: list[str],
    port: int,
) -> dict[str, Any]:
    backend = {"name": frontend["name"], "port": port}
    return {
        "apiVersion": ROUTE_API_VERSIONS[kind],
        "kind": kind,
        "metadata": frontend,
        "spec": {
            "parentRefs": [parent_ref(frontend["namespace"], gateway, section)],
            "hostnames": names,
            "rules": [{"backendRefs": [backend]}],
        },
    }


def route_kinds(spec: models.BlogSiteSpec) -> tuple[str, ...]:
    """The routes the site needs: none on its own Service, an HTTPRoute
    behind a gateway, and a TLSRoute too when it serves HTTPS."""
    if spec.frontend.gateway is None:
        return ()
    return ROUTE_KINDS if spec.tls is not None else (HTTP_ROUTE,)


def render_routes(frontend: dict[str, Any], spec: models.BlogSiteSpec) -> list[dict[str, Any]]:
    """The site's routes, named and labelled as `frontend` (the frontend
    Service's metadata) and pointing at that Service."""
    gateway = spec.frontend.gateway
    if gateway is None:
        return []
    names = [*spec.domains, *spec.redirect_domains]
    sections = {HTTP_ROUTE: gateway.http_listener, TLS_ROUTE: gateway.tls_listener}
    ports = {HTTP_ROUTE: 80, TLS_ROUTE: 443}
    return [
        _route(frontend, kind, gateway, sections[kind], names=names, port=ports[kind])
        for kind in route_kinds(spec)
    ]
