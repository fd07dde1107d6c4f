"""The Kubernetes version floor, read from what API servers really answer."""

from __future__ import annotations

from typing import Any

import pytest

from blogsite_operator.policies.kubernetes_version import (
    MINIMUM,
    parse_version,
    version_problem,
)


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ({"major": "1", "minor": "31", "gitVersion": "v1.31.13"}, (1, 31)),
        ({"major": "1", "minor": "30+", "gitVersion": "v1.30.4-eks-a737599"}, (1, 30)),
        ({"major": "1", "minor": "36+"}, (1, 36)),
        ({"gitVersion": "v1.29.0-gke.1"}, (1, 29)),
        ({}, None),
    ],
)
def test_parse_version(version: dict[str, Any], parsed: tuple[int, int] | None) -> None:
    assert parse_version(version) == parsed


def test_the_floor_is_1_31() -> None:
    assert MINIMUM == "1.31"


@pytest.mark.parametrize("git_version", ["v1.29.15", "v1.30.4-eks-a737599", "v0.50.0"])
def test_older_servers_are_refused_with_both_versions_and_the_reason(git_version: str) -> None:
    problem = version_problem({"gitVersion": git_version})
    assert problem is not None
    assert f"Kubernetes {git_version} is too old" in problem
    assert "needs 1.31 or newer" in problem
    assert "isCIDR" in problem


@pytest.mark.parametrize("git_version", ["v1.31.0", "v1.31.13", "v1.36.3", "v2.0.0"])
def test_the_floor_and_newer_are_accepted(git_version: str) -> None:
    assert version_problem({"gitVersion": git_version}) is None


def test_a_server_that_hides_its_version_is_not_refused() -> None:
    assert version_problem({"major": "", "minor": ""}) is None
