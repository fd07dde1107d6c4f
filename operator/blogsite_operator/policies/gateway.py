"""Is a site behind a shared Gateway reachable through it? (pure)

The Gateway's implementation decides, and writes its decision into each
route's status, per parent: Accepted (the route is attached to a listener)
and ResolvedRefs (its backend, the frontend Service, exists). The site's
GatewayAccepted condition repeats those words, and says what is missing
when the Gateway cannot take the routes at all: the Gateway API is not
installed, the Gateway does not exist, or it has no listener for the
protocol a route needs (an HTTPRoute needs an HTTP listener; a TLSRoute a
TLS listener in Passthrough mode), so a site never waits in silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blogsite_operator import models
from blogsite_operator.policies.readiness import (
    CONDITION_FALSE,
    CONDITION_TRUE,
    CONDITION_UNKNOWN,
    Verdict,
)
from blogsite_operator.render.routes import HTTP_ROUTE, TLS_ROUTE

# Routes and the Gateway are read, not watched: looked at again this soon
# while the routes wait for the Gateway, and this often once accepted.
PENDING_RECHECK_SECONDS = 5.0
ACCEPTED_RECHECK_SECONDS = 60.0

# The listener a route kind attaches to: (protocol, TLS mode or None).
LISTENER_FOR = {HTTP_ROUTE: ("HTTP", None), TLS_ROUTE: ("TLS", "Passthrough")}


@dataclass(frozen=True)
class GatewayFindings:
    """What the pass read: whether the API serves the routes, the Gateway,
    and each route the site needs, as the API server returned it."""

    api_served: bool
    gateway: Mapping[str, Any] | None
    routes: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayJudgement:
    verdict: Verdict
    addresses: tuple[str, ...]
    routes: tuple[dict[str, str], ...]  # status.gateway.routes
    recheck_after: float


def _gateway_label(attachment: models.GatewayAttachment, namespace: str) -> str:
    return f"Gateway {attachment.namespace or namespace}/{attachment.name}"


def gateway_addresses(gateway: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The addresses the Gateway's implementation says it listens on."""
    found = ((gateway or {}).get("status") or {}).get("addresses") or []
    return tuple(a["value"] for a in found if a.get("value"))


def missing_listener(gateway: Mapping[str, Any], kind: str, section: str | None) -> str | None:
    """Why the Gateway has no listener a route of `kind` can attach to, or None."""
    protocol, mode = LISTENER_FOR[kind]
    wanted = f"protocol {protocol}" + (f" in TLS mode {mode}" if mode else "")
    listeners = (gateway.get("spec") or {}).get("listeners") or []
    if section is not None:
        listeners = [x for x in listeners if x.get("name") == section]
        if not listeners:
            return f"has no listener named {section!r}"
    for listener in listeners:
        tls_mode = (listener.get("tls") or {}).get("mode", "Terminate")
        if listener.get("protocol") == protocol and (mode is None or tls_mode == mode):
            return None
    where = f"listener {section!r} is not" if section is not None else "no listener has"
    return f"{where} {wanted}, which a {kind} needs"


def _parent_status(route: Mapping[str, Any], parent: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The route's status for this parent, if written for its current spec."""
    generation = (route.get("metadata") or {}).get("generation")
    for entry in (route.get("status") or {}).get("parents") or []:
        ref = entry.get("parentRef") or {}
        if (
            ref.get("name") == parent["name"]
            and ref.get("namespace", route["metadata"].get("namespace")) == parent["namespace"]
            and ref.get("sectionName") == parent.get("sectionName")
        ):
            conditions = entry.get("conditions") or []
            if generation is not None and any(
                c.get("observedGeneration", generation) < generation for c in conditions
            ):
                return None  # written for an older spec of the route
            found: Mapping[str, Any] = entry
            return found
    return None


def _route_verdict(
    kind: str, route: Mapping[str, Any] | None, gateway: str
) -> tuple[Verdict, dict[str, str]]:
    name = ((route or {}).get("metadata") or {}).get("name", "")
    summary = {"kind": kind, "name": name, "accepted": "Unknown", "resolvedRefs": "Unknown"}
    if route is None:
        return Verdict(CONDITION_UNKNOWN, "RoutePending", f"{kind} not created yet"), summary
    parent = ((route.get("spec") or {}).get("parentRefs") or [{}])[0]
    entry = _parent_status(route, parent)
    if entry is None:
        message = f"waiting for {gateway} to accept {kind} {name}"
        return Verdict(CONDITION_UNKNOWN, "RoutePending", message), summary
    conditions = {c.get("type"): c for c in entry.get("conditions") or []}
    for wanted in ("Accepted", "ResolvedRefs"):
        condition = conditions.get(wanted) or {}
        key = "accepted" if wanted == "Accepted" else "resolvedRefs"
        summary[key] = condition.get("status", "Unknown")
    for wanted in ("Accepted", "ResolvedRefs"):
        condition = conditions.get(wanted) or {}
        status = condition.get("status", "Unknown")
        if status != CONDITION_TRUE:
            said = condition.get("message") or "no message"
            reason = condition.get("reason") or "RoutePending"
            message = f"{kind} {name}: {wanted} {status} by {gateway}: {reason}: {said}"
            summary["message"] = f"{reason}: {said}"
            verdict_status = CONDITION_FALSE if status == CONDITION_FALSE else CONDITION_UNKNOWN
            return Verdict(verdict_status, reason, message), summary
    return Verdict(CONDITION_TRUE, "Accepted", f"{kind} {name} accepted"), summary


def judge_gateway(
    attachment: models.GatewayAttachment,
    namespace: str,
    kinds: tuple[str, ...],
    findings: GatewayFindings,
) -> GatewayJudgement:
    """GatewayAccepted for a site whose routes are of `kinds`."""
    gateway = _gateway_label(attachment, namespace)

    def refused(reason: str, message: str) -> GatewayJudgement:
        return GatewayJudgement(
            Verdict(CONDITION_FALSE, reason, message), (), (), PENDING_RECHECK_SECONDS
        )

    if not findings.api_served:
        return refused(
            "GatewayAPINotInstalled",
            "the cluster does not serve the Gateway API's HTTPRoute "
            "(gateway.networking.k8s.io/v1) and TLSRoute (v1alpha2): install its CRDs "
            "(TLSRoute is in the experimental channel), or remove frontend.gateway",
        )
    if findings.gateway is None:
        return refused("GatewayNotFound", f"{gateway} does not exist")
    for kind in kinds:
        section = attachment.http_listener if kind == HTTP_ROUTE else attachment.tls_listener
        problem = missing_listener(findings.gateway, kind, section)
        if problem is not None:
            reason = "NoHTTPListener" if kind == HTTP_ROUTE else "NoTLSPassthroughListener"
            return refused(reason, f"{gateway} {problem}")
    addresses = gateway_addresses(findings.gateway)
    verdicts = [_route_verdict(kind, findings.routes.get(kind), gateway) for kind in kinds]
    summaries = tuple(summary for _, summary in verdicts)
    for status in (CONDITION_FALSE, CONDITION_UNKNOWN):
        for verdict, _ in verdicts:
            if verdict.status == status:
                return GatewayJudgement(verdict, addresses, summaries, PENDING_RECHECK_SECONDS)
    where = f" at {', '.join(addresses)}" if addresses else ""
    accepted = " and ".join(kinds)
    return GatewayJudgement(
        Verdict(CONDITION_TRUE, "Accepted", f"{accepted} accepted by {gateway}{where}"),
        addresses,
        summaries,
        ACCEPTED_RECHECK_SECONDS,
    )
