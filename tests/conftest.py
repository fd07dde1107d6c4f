"""Shared pytest options (which cluster the integration tests use), the
figures tests report at the end of a run, and where the run's time went."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

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


# Seconds per test (setup + call + teardown), written at the end of every run
# so CI can print where the time went.
ROOT = Path(__file__).resolve().parents[1]
DURATIONS_FILE = Path(
    os.environ.get("BLOGSITE_TEST_DURATIONS", ROOT / "build" / "test-durations.txt")
)
_durations: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _durations:
        return
    by_module: defaultdict[str, float] = defaultdict(float)
    for nodeid, seconds in _durations.items():
        by_module[nodeid.split("::", 1)[0]] += seconds
    lines = [f"# {len(_durations)} tests, {sum(_durations.values()):.0f} s in all", "# by module"]
    lines += [f"{s:8.1f}  {m}" for m, s in sorted(by_module.items(), key=lambda i: -i[1])]
    lines.append("# by test (setup + call + teardown)")
    lines += [f"{s:8.1f}  {n}" for n, s in sorted(_durations.items(), key=lambda i: -i[1])]
    DURATIONS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DURATIONS_FILE.write_text("\n".join(lines) + "\n")
