"""Shared pytest options (which cluster the integration tests use) and the
figures tests report at the end of a run."""

from __future__ import annotations

import pytest

from tests.support import FIGURES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=["kwok", "kind"],
        default="kwok",
        help="kwok: the local control plane built from source (default); "
        "kind: a kind cluster through pytest-kind (needs a Docker engine)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures the tests measured (revert times, requests sent and failed)."""
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
