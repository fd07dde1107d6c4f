"""A site behind a shared Gateway: its routes and how their status is read."""

from __future__ import annotations

from typing import Any

import pytest

from blogsite_operator import models
from blogsite_operator.policies.gateway import (
    ACCEPTED_RECHECK_SECONDS,
    GatewayFindings,
    judge_gateway,
    missing_listener,
)
from blogsite_operator.render import RenderSettings, SiteRef, render_site
from blogsite_operator.render.routes import HTTP_ROUTE, TLS_ROUTE

SITE = SiteRef("blog", "blogs", "uid-1")
ATTACHMENT = models.GatewayAttachment(name="shared", namespace="gateway-system")


def spec(tls: bool = True, **gateway: Any) -> models.BlogSiteSpec:
    raw: dict[str, Any] = {
        "domains": ["blog.example.com", "www.example.com"],
        "redirectDomains": ["old.example.com"],
        "daedalus": {"image": "d:1"},
        "frontend": {"gateway": {"name": "shared", "namespace": "gateway-system", **gateway}},
    }
    if tls:
        raw["tls"] = {"acme": {"email": "me@example.com"}}
    return models.parse_spec(raw)


def gateway(*listeners: dict[str, Any], addresses: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "metadata": {"name": "shared", "namespace": "gateway-system"},
        "spec": {"listeners": list(listeners)},
        "status": {"addresses": [{"type": "IPAddress", "value": a} for a in addresses]},
    }


HTTP = {"name": "web", "protocol": "HTTP", "port": 80}
PASSTHROUGH = {"name": "tls", "protocol": "TLS", "port": 443, "tls": {"mode": "Passthrough"}}
TERMINATE = {"name": "websecure", "protocol": "HTTPS", "port": 443, "tls": {"mode": "Terminate"}}


def routes_of(site_spec: models.BlogSiteSpec) -> dict[str, dict[str, Any]]:
    objects = render_site(SITE, site_spec, RenderSettings())
    return {o["kind"]: o for o in objects if o["kind"] in (HTTP_ROUTE, TLS_ROUTE)}


def judged(route: dict[str, Any], *conditions: tuple[str, str, str]) -> dict[str, Any]:
    """The route as a Gateway's implementation leaves it after judging it."""
    parent = route["spec"]["parentRefs"][0]
    written = [
        {"type": t, "status": s, "reason": r, "message": f"said {r}", "observedGeneration": 1}
        for t, s, r in conditions
    ]
    return {
        **route,
        "metadata": {**route["metadata"], "generation": 1},
        "status": {"parents": [{"parentRef": parent, "conditions": written}]},
    }


ACCEPTED = (("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs"))


class TestRoutes:
    def test_every_name_goes_to_the_frontend_by_http_and_by_sni(self) -> None:
        routes = routes_of(spec())
        names = ["blog.example.com", "www.example.com", "old.example.com"]
        http, tls = routes[HTTP_ROUTE], routes[TLS_ROUTE]
        assert http["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert tls["apiVersion"] == "gateway.networking.k8s.io/v1alpha2"
        for route, port in ((http, 80), (tls, 443)):
            assert route["metadata"]["name"] == "blog-frontend"
            assert route["metadata"]["namespace"] == "blogs"
            assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
            assert route["spec"]["hostnames"] == names
            assert route["spec"]["rules"] == [
                {"backendRefs": [{"name": "blog-frontend", "port": port}]}
            ]
            assert route["spec"]["parentRefs"] == [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": "gateway-system",
                    "name": "shared",
                }
            ]

    def test_listeners_named_are_asked_for(self) -> None:
        routes = routes_of(spec(httpListener="web", tlsListener="tls"))
        assert routes[HTTP_ROUTE]["spec"]["parentRefs"][0]["sectionName"] == "web"
        assert routes[TLS_ROUTE]["spec"]["parentRefs"][0]["sectionName"] == "tls"

    def test_plain_http_needs_no_tls_route(self) -> None:
        assert list(routes_of(spec(tls=False))) == [HTTP_ROUTE]

    def test_behind_a_gateway_the_service_is_cluster_ip_and_alone_no_route(self) -> None:
        objects = render_site(SITE, spec(), RenderSettings())
        service = next(
            o for o in objects if o["kind"] == "Service" and "frontend" in o["metadata"]["name"]
        )
        assert service["spec"]["type"] == "ClusterIP"
        alone = models.parse_spec({"domains": ["a.example.com"], "daedalus": {"image": "d:1"}})
        assert not [o for o in render_site(SITE, alone) if o["kind"] in (HTTP_ROUTE, TLS_ROUTE)]


class TestListeners:
    @pytest.mark.parametrize(
        ("listeners", "kind", "section", "problem"),
        [
            ([HTTP, PASSTHROUGH], HTTP_ROUTE, None, None),
            ([HTTP, PASSTHROUGH], TLS_ROUTE, None, None),
            (
                [HTTP, TERMINATE],
                TLS_ROUTE,
                None,
                "no listener has protocol TLS in TLS mode Passthrough",
            ),
            ([PASSTHROUGH], HTTP_ROUTE, None, "no listener has protocol HTTP"),
            ([HTTP, PASSTHROUGH], TLS_ROUTE, "web", "listener 'web' is not protocol TLS"),
            ([HTTP], HTTP_ROUTE, "other", "has no listener named 'other'"),
        ],
    )
    def test_a_route_needs_a_listener_of_its_protocol(
        self, listeners: list[dict[str, Any]], kind: str, section: str | None, problem: str | None
    ) -> None:
        found = missing_listener(gateway(*listeners), kind, section)
        if problem is None:
            assert found is None
        else:
            assert found is not None
            assert problem in found


class TestJudgeGateway:
    def judge(self, findings: GatewayFindings) -> Any:
        return judge_gateway(ATTACHMENT, "blogs", (HTTP_ROUTE, TLS_ROUTE), findings)

    def test_no_gateway_api_says_so(self) -> None:
        verdict = self.judge(GatewayFindings(False, None)).verdict
        assert (verdict.status, verdict.reason) == ("False", "GatewayAPINotInstalled")
        assert "install its CRDs" in verdict.message

    def test_a_missing_gateway_is_named(self) -> None:
        verdict = self.judge(GatewayFindings(True, None)).verdict
        assert (verdict.status, verdict.reason) == ("False", "GatewayNotFound")
        assert "Gateway gateway-system/shared does not exist" in verdict.message

    def test_no_passthrough_listener_is_a_clear_refusal_not_a_wait(self) -> None:
        verdict = self.judge(GatewayFindings(True, gateway(HTTP, TERMINATE))).verdict
        assert (verdict.status, verdict.reason) == ("False", "NoTLSPassthroughListener")

    def test_routes_not_yet_judged_are_pending(self) -> None:
        routes = routes_of(spec())
        judgement = self.judge(GatewayFindings(True, gateway(HTTP, PASSTHROUGH), routes))
        assert (judgement.verdict.status, judgement.verdict.reason) == ("Unknown", "RoutePending")
        assert "waiting for Gateway gateway-system/shared" in judgement.verdict.message

    def test_a_verdict_for_an_older_spec_of_the_route_is_not_taken(self) -> None:
        routes = {k: judged(r, *ACCEPTED) for k, r in routes_of(spec()).items()}
        routes[TLS_ROUTE]["metadata"]["generation"] = 2
        judgement = self.judge(GatewayFindings(True, gateway(HTTP, PASSTHROUGH), routes))
        assert judgement.verdict.status == "Unknown"

    def test_accepted_routes_give_the_gateway_addresses(self) -> None:
        routes = {k: judged(r, *ACCEPTED) for k, r in routes_of(spec()).items()}
        found = gateway(HTTP, PASSTHROUGH, addresses=("198.18.0.80",))
        judgement = self.judge(GatewayFindings(True, found, routes))
        assert judgement.verdict.status == "True"
        assert judgement.verdict.message == (
            "HTTPRoute and TLSRoute accepted by Gateway gateway-system/shared at 198.18.0.80"
        )
        assert judgement.addresses == ("198.18.0.80",)
        assert judgement.recheck_after == ACCEPTED_RECHECK_SECONDS
        assert [r["accepted"] for r in judgement.routes] == ["True", "True"]

    def test_a_refused_route_carries_the_gateways_reason_and_message(self) -> None:
        routes = routes_of(spec())
        routes = {
            HTTP_ROUTE: judged(routes[HTTP_ROUTE], *ACCEPTED),
            TLS_ROUTE: judged(
                routes[TLS_ROUTE],
                ("Accepted", "False", "NoMatchingListenerHostname"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
            ),
        }
        judgement = self.judge(GatewayFindings(True, gateway(HTTP, PASSTHROUGH), routes))
        verdict = judgement.verdict
        assert (verdict.status, verdict.reason) == ("False", "NoMatchingListenerHostname")
        assert verdict.message == (
            "TLSRoute blog-frontend: Accepted False by Gateway gateway-system/shared: "
            "NoMatchingListenerHostname: said NoMatchingListenerHostname"
        )
        assert judgement.routes[1]["message"] == (
            "NoMatchingListenerHostname: said NoMatchingListenerHostname"
        )
