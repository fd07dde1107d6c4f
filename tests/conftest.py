"""Shared pytest options: which cluster the integration tests use."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=["kwok", "kind"],
        default="kwok",
        help="kwok: the local control plane built from source (default); "
        "kind: a kind cluster through pytest-kind (needs a Docker engine)",
    )
