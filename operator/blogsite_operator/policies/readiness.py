"""Is the site serving? Derived from the live Deployments of its components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blogsite_operator.render.site import Component

CONDITION_TRUE = "True"
CONDITION_FALSE = "False"


@dataclass(frozen=True)
class Verdict:
    """A condition's worth of judgement."""

    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class ComponentFacts:
    """What the live Deployment of one component says about itself."""

    component: Component
    exists: bool
    replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0
    up_to_date: bool = False  # the controller has observed the latest generation
    image: str | None = None


def component_facts(component: Component, deployment: dict[str, Any] | None) -> ComponentFacts:
    if deployment is None:
        return ComponentFacts(component=component, exists=False)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    metadata = deployment.get("metadata") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return ComponentFacts(
        component=component,
        exists=True,
        replicas=int(spec.get("replicas", 1)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        available_replicas=int(status.get("availableReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        up_to_date=status.get("observedGeneration", 0) >= metadata.get("generation", 0),
        image=containers[0].get("image"),
    )


def component_verdict(facts: ComponentFacts) -> Verdict:
    """Available: every desired replica is updated, available, and observed."""
    name = facts.component.value
    if not facts.exists:
        return Verdict(CONDITION_FALSE, "Missing", f"the {name} Deployment does not exist yet")
    if not facts.up_to_date:
        return Verdict(
            CONDITION_FALSE, "Progressing", f"{name}: the latest change is not yet observed"
        )
    if facts.updated_replicas < facts.replicas or facts.available_replicas < facts.replicas:
        return Verdict(
            CONDITION_FALSE,
            "Progressing",
            f"{name}: {facts.available_replicas}/{facts.replicas} replicas available, "
            f"{facts.updated_replicas}/{facts.replicas} updated",
        )
    return Verdict(
        CONDITION_TRUE,
        "Available",
        f"{name}: {facts.available_replicas}/{facts.replicas} available",
    )


def site_verdict(verdicts: dict[Component, Verdict]) -> Verdict:
    """Ready when every component is Available; otherwise say which are not."""
    waiting = [v.message for v in verdicts.values() if v.status != CONDITION_TRUE]
    if not waiting:
        return Verdict(CONDITION_TRUE, "Available", "all components are available")
    return Verdict(CONDITION_FALSE, "ComponentsNotAvailable", "; ".join(waiting))
