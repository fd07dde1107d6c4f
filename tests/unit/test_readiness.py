"""When is a component Available, when is the whole site Ready, and when is
a rollout Progressing (which leaves Ready alone while the old version serves)."""

from __future__ import annotations

from typing import Any

from blogsite_operator.policies.readiness import (
    Verdict,
    component_facts,
    component_verdict,
    progressing_verdict,
    site_verdict,
)
from blogsite_operator.render.site import Component


def deployment(
    *,
    replicas: int = 2,
    available: int = 2,
    updated: int = 2,
    generation: int = 3,
    observed: int = 3,
    total: int | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": "d:1"}]}}},
        "status": {
            "observedGeneration": observed,
            "availableReplicas": available,
            "readyReplicas": available,
            "updatedReplicas": updated,
            "replicas": replicas if total is None else total,
        },
    }


def verdict(obj: dict[str, Any] | None) -> tuple[str, str]:
    v = component_verdict(component_facts(Component.DAEDALUS, obj))
    return v.status, v.reason


def test_missing_deployment() -> None:
    assert verdict(None) == ("False", "Missing")


def test_all_replicas_available_and_updated() -> None:
    assert verdict(deployment()) == ("True", "Available")


def progressing(*deployments: dict[str, Any], rollout: Verdict | None = None) -> tuple[str, str]:
    facts = [component_facts(Component.DAEDALUS, d) for d in deployments]
    v = progressing_verdict(facts, rollout)
    return v.status, v.reason


def test_a_rollout_beside_the_old_pods_stays_available_and_is_progressing() -> None:
    # maxSurge 1: a new pod beside two old ones, not ready yet.
    surging = deployment(updated=1, total=3)
    assert verdict(surging) == ("True", "Available")
    assert progressing(surging) == ("True", "RollingOut")
    # The change is not yet seen by the Deployment controller.
    assert verdict(deployment(generation=4, observed=3)) == ("True", "Available")
    assert progressing(deployment(generation=4, observed=3)) == ("True", "RollingOut")
    # Every pod updated, an old one still terminating.
    assert progressing(deployment(total=3)) == ("True", "RollingOut")
    assert progressing(deployment()) == ("False", "Complete")


def test_too_few_available_replicas_is_unavailable_and_still_progressing() -> None:
    assert verdict(deployment(available=1)) == ("False", "MinimumReplicasUnavailable")
    assert progressing(deployment(available=1)) == ("True", "RollingOut")


def test_a_failed_rollout_is_not_progressing_and_says_why() -> None:
    failed = Verdict("False", "RolledBack", "daedalus: d:2 failed; back to d:1")
    status, reason = progressing(deployment(updated=1, total=3), rollout=failed)
    assert (status, reason) == ("False", "RolledBack")
    healthy = Verdict("True", "Progressing", "daedalus: rolling out d:2")
    assert progressing(deployment(updated=1, total=3), rollout=healthy) == ("True", "RollingOut")


def test_a_missing_deployment_is_progressing() -> None:
    assert progressing(deployment()) == ("False", "Complete")
    facts = [component_facts(Component.FRONTEND, None)]
    assert progressing_verdict(facts, None).status == "True"


def test_facts_read_the_image() -> None:
    assert component_facts(Component.DAEDALUS, deployment()).image == "d:1"


def test_site_ready_only_when_every_component_is() -> None:
    good = component_verdict(component_facts(Component.DAEDALUS, deployment()))
    bad = component_verdict(component_facts(Component.FRONTEND, None))
    assert site_verdict({Component.DAEDALUS: good}).status == "True"
    combined = site_verdict({Component.DAEDALUS: good, Component.FRONTEND: bad})
    assert combined.status == "False"
    assert "frontend Deployment does not exist" in combined.message
