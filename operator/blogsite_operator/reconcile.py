"""One level-based pass over a BlogSite: render, apply what differs, report.

Pure helpers (`is_subset`, `next_status`) decide; `reconcile_site` does the
I/O through `kube.Api` and returns what it did so the caller can log it.
Running it twice in a row makes no second write.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic

from blogsite_operator import models
from blogsite_operator.policies.readiness import (
    CONDITION_FALSE,
    CONDITION_TRUE,
    Verdict,
    component_facts,
    component_verdict,
    site_verdict,
)
from blogsite_operator.render import COMPONENTS, RenderSettings, SiteRef, child_name, render_site
from blogsite_operator.render.site import Component

CONDITION_FOR_COMPONENT = {
    Component.FRONTEND: "FrontendAvailable",
    Component.DAEDALUS: "DaedalusAvailable",
    Component.CERT_REFRESH: "CertRefreshAvailable",
}


class ClusterApi(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def patch_blogsite_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...
    def post_event(
        self, site: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None: ...


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What one pass did, for logs and tests."""

    applied: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    status_written: bool = False
    events: list[Event] = field(default_factory=list)


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field we set already has our value in the live object.

    The API server adds defaults and status, so equality is too strict; a
    field we own that differs (a hand edit, a spec change) makes this False.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            is_subset(value, live[key]) if key in live else _is_omitted_empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def _is_omitted_empty(value: Any) -> bool:
    """Go's `omitempty` drops zero values from API responses: absent means equal."""
    return value in (0, False, "", None, [], {})


def is_owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _condition(
    condition_type: str,
    verdict: Verdict,
    generation: int,
    previous: dict[str, dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    old = previous.get(condition_type)
    unchanged = old is not None and old.get("status") == verdict.status
    return {
        "type": condition_type,
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged and old else now,
        "observedGeneration": generation,
    }


def next_status(
    *,
    spec: models.BlogSiteSpec | None,
    generation: int,
    previous: dict[str, Any],
    verdicts: dict[Component, Verdict],
    deployments: dict[Component, dict[str, Any] | None],
    reconciled: Verdict,
    now: str,
) -> dict[str, Any]:
    """The whole status the BlogSite should show, keeping unchanged timestamps."""
    old_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    ready = site_verdict(verdicts)
    if reconciled.status != CONDITION_TRUE:
        ready = Verdict(CONDITION_FALSE, reconciled.reason, reconciled.message)
    conditions = [
        _condition("Ready", ready, generation, old_conditions, now),
        _condition("Reconciled", reconciled, generation, old_conditions, now),
        *(
            _condition(CONDITION_FOR_COMPONENT[c], v, generation, old_conditions, now)
            for c, v in verdicts.items()
        ),
    ]
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    if spec is not None:
        scheme = "https" if spec.tls is not None else "http"
        status["primaryDomain"] = spec.primary_domain
        status["url"] = f"{scheme}://{spec.primary_domain}/"
    components = {}
    for component, deployment in deployments.items():
        facts = component_facts(component, deployment)
        if facts.exists:
            components[component.value] = {
                "image": facts.image,
                "replicas": facts.replicas,
                "readyReplicas": facts.ready_replicas,
                "availableReplicas": facts.available_replicas,
            }
    status["components"] = components
    return status


def _status_differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(key) != value for key, value in new.items())


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_invalid(error: pydantic.ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        problems.append(f"spec.{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(problems)


def reconcile_site(api: ClusterApi, site: dict[str, Any], settings: RenderSettings) -> Outcome:
    """Bring the children of one BlogSite in line with its spec, then report."""
    outcome = Outcome()
    metadata = site["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    generation = int(metadata.get("generation", 0))
    previous_status = site.get("status") or {}

    spec: models.BlogSiteSpec | None
    try:
        spec = models.parse_spec(site.get("spec"))
    except pydantic.ValidationError as error:
        spec = None
        reconciled = Verdict(CONDITION_FALSE, "InvalidSpec", _describe_invalid(error))
    else:
        reconciled = Verdict(CONDITION_TRUE, "Applied", "all objects are as the spec describes")

    if spec is not None:
        created: list[str] = []
        updated: list[str] = []
        for desired in render_site(SiteRef(name, namespace, uid), spec, settings):
            kind, child = desired["kind"], desired["metadata"]["name"]
            live = api.get(kind, namespace, child)
            if live is not None and not is_owned_by(live, uid):
                outcome.conflicts.append(f"{kind} {child}")
                continue
            if live is not None and is_subset(desired, live):
                continue
            api.apply(desired)
            outcome.applied.append(f"{kind} {child}")
            (created if live is None else updated).append(f"{kind} {child}")
        for verb, objects in (("Created", created), ("Updated", updated)):
            if objects:
                outcome.events.append(Event("Normal", verb, f"{verb} {', '.join(objects)}"))
        if outcome.conflicts:
            reconciled = Verdict(
                CONDITION_FALSE,
                "NameConflict",
                "left untouched because another owner has them: "
                + ", ".join(outcome.conflicts)
                + "; delete or rename them, or rename this BlogSite",
            )

    deployments = {c: api.get("Deployment", namespace, child_name(name, c)) for c in COMPONENTS}
    verdicts = (
        {c: component_verdict(component_facts(c, deployments[c])) for c in COMPONENTS}
        if spec is not None
        else {}
    )
    status = next_status(
        spec=spec,
        generation=generation,
        previous=previous_status,
        verdicts=verdicts,
        deployments=deployments,
        reconciled=reconciled,
        now=_now(),
    )
    outcome.events.extend(_transition_events(previous_status, status))
    if _status_differs(previous_status, status):
        api.patch_blogsite_status(namespace, name, status)
        outcome.status_written = True
    for event in outcome.events:
        api.post_event(site, event.type, event.reason, event.message)
    return outcome


def _transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """Events for condition changes a person would want in `kubectl describe`."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    events = []
    for condition in new["conditions"]:
        previous = before.get(condition["type"])
        if (
            previous is not None
            and previous.get("status") == condition["status"]
            and (previous.get("reason") == condition["reason"])
        ):
            continue
        if condition["type"] == "Ready":
            if condition["status"] == CONDITION_TRUE:
                events.append(
                    Event("Normal", "Ready", "the site is serving: " + condition["message"])
                )
            elif previous is not None and previous.get("status") == CONDITION_TRUE:
                events.append(Event("Warning", "NotReady", condition["message"]))
        elif condition["type"] == "Reconciled" and condition["status"] == CONDITION_FALSE:
            events.append(Event("Warning", condition["reason"], condition["message"]))
    return events
