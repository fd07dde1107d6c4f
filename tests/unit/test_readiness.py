"""When is a component Available, and when is the whole site Ready."""

from __future__ import annotations

from typing import Any

from blogsite_operator.policies.readiness import (
    component_facts,
    component_verdict,
    site_verdict,
)
from blogsite_operator.render.site import Component


def deployment(
    replicas: int = 2,
    available: int = 2,
    updated: int = 2,
    generation: int = 3,
    observed: int = 3,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": "d:1"}]}}},
        "status": {
            "observedGeneration": observed,
            "availableReplicas": available,
            "readyReplicas": available,
            "updatedReplicas": updated,
        },
    }


def verdict(obj: dict[str, Any] | None) -> tuple[str, str]:
    v = component_verdict(component_facts(Component.DAEDALUS, obj))
    return v.status, v.reason


def test_missing_deployment() -> None:
    assert verdict(None) == ("False", "Missing")


def test_all_replicas_available_and_updated() -> None:
    assert verdict(deployment()) == ("True", "Available")


def test_unobserved_generation_is_not_available_yet() -> None:
    assert verdict(deployment(generation=4, observed=3)) == ("False", "Progressing")


def test_rollout_in_progress() -> None:
    assert verdict(deployment(updated=1)) == ("False", "Progressing")
    assert verdict(deployment(available=1)) == ("False", "Progressing")


def test_facts_read_the_image() -> None:
    assert component_facts(Component.DAEDALUS, deployment()).image == "d:1"


def test_site_ready_only_when_every_component_is() -> None:
    good = component_verdict(component_facts(Component.DAEDALUS, deployment()))
    bad = component_verdict(component_facts(Component.FRONTEND, None))
    assert site_verdict({Component.DAEDALUS: good}).status == "True"
    combined = site_verdict({Component.DAEDALUS: good, Component.FRONTEND: bad})
    assert combined.status == "False"
    assert "frontend Deployment does not exist" in combined.message
