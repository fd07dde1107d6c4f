"""Is the site serving, and is a rollout under way? Derived from the live
Deployments of its components, as a Deployment tells `Available` from
`Progressing`: a rollout surges new pods beside the old ones (maxUnavailable
0), so the old version keeps the site serving, and Ready True, until the new
one takes over; only Progressing says a rollout is running."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blogsite_operator.render.site import Component

CONDITION_TRUE = "True"
CONDITION_FALSE = "False"
CONDITION_UNKNOWN = "Unknown"


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
    total_replicas: int = 0  # pods of every version, old ones still terminating included
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
        total_replicas=int(status.get("replicas", 0)),
        up_to_date=status.get("observedGeneration", 0) >= metadata.get("generation", 0),
        image=containers[0].get("image"),
    )


def component_verdict(facts: ComponentFacts) -> Verdict:
    """Available: at least the desired number of replicas available, of
    whichever version (a Deployment's minimum availability with maxUnavailable 0)."""
    name = facts.component.value
    if not facts.exists:
        return Verdict(CONDITION_FALSE, "Missing", f"the {name} Deployment does not exist yet")
    if facts.available_replicas < facts.replicas:
        return Verdict(
            CONDITION_FALSE,
            "MinimumReplicasUnavailable",
            f"{name}: {facts.available_replicas}/{facts.replicas} replicas available",
        )
    return Verdict(
        CONDITION_TRUE,
        "Available",
        f"{name}: {facts.available_replicas}/{facts.replicas} available",
    )


def rollout_in_progress(facts: ComponentFacts) -> str | None:
    """What of this component is still rolling out; None once every replica
    runs its latest template, is available, and no old one is left."""
    name = facts.component.value
    if not facts.exists:
        return f"the {name} Deployment does not exist yet"
    if not facts.up_to_date:
        return f"{name}: the latest change is not yet observed"
    if facts.updated_replicas < facts.replicas:
        return f"{name}: {facts.updated_replicas}/{facts.replicas} replicas updated"
    if facts.available_replicas < facts.replicas:
        return f"{name}: {facts.available_replicas}/{facts.replicas} replicas available"
    if facts.total_replicas > facts.replicas:
        return f"{name}: {facts.total_replicas - facts.replicas} old replicas still running"
    return None


def site_verdict(verdicts: dict[Component, Verdict]) -> Verdict:
    """Ready when every component is Available; otherwise say which are not."""
    waiting = [v.message for v in verdicts.values() if v.status != CONDITION_TRUE]
    if not waiting:
        return Verdict(CONDITION_TRUE, "Available", "all components are available")
    return Verdict(CONDITION_FALSE, "ComponentsNotAvailable", "; ".join(waiting))


def progressing_verdict(facts: list[ComponentFacts], rollout: Verdict | None) -> Verdict:
    """Progressing: True while any component rolls out. A rollout judged
    failed (RolloutHealthy False) is not progressing, as a Deployment past its
    deadline is not: it says why instead."""
    if rollout is not None and rollout.status != CONDITION_TRUE:
        return Verdict(CONDITION_FALSE, rollout.reason, rollout.message)
    if rollout is not None and rollout.reason == "Canary":  # which step, and how it goes
        return Verdict(CONDITION_TRUE, rollout.reason, rollout.message)
    rolling = [message for f in facts if (message := rollout_in_progress(f)) is not None]
    if rolling:
        return Verdict(CONDITION_TRUE, "RollingOut", "; ".join(rolling))
    return Verdict(CONDITION_FALSE, "Complete", "every component runs its latest version")
