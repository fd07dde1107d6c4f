"""Shared pytest options (which cluster the integration tests use), the
figures tests report at the end of a run, and where the run's time went."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support import FIGURES

ROOT = Path(__file__).resolve().parents[1]


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


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# A module whose tests are one chain (module fixtures, file order), or share
# a cluster of the module's own (two workers would each start and stop it):
# one worker runs all of it. Every other test is scheduled on its own.
CHAINED_MODULES = (
    "tests/integration/test_real_node.py",
    "tests/integration/test_oldest_kubernetes.py",
    "tests/integration/test_gateway.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scope scheduling, with a test as the scope except in a
    chained module (xdist_group marks do not reach pytest 9's node ids)."""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # noqa: PLC0415

    class ChainedModulesTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in CHAINED_MODULES else nodeid

    return ChainedModulesTogether(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: a worker's figures, for the summary the controller prints."""
    FIGURES.extend(getattr(node, "workeroutput", {}).get("figures", []))


# Seconds per test (setup + call + teardown), written at the end of every run
# so CI can print where the time went. With BLOGSITE_TEST_DURATIONS_MERGE=1
# a run adds to the file's figures (make test runs pytest twice).
DURATIONS_FILE = Path(
    os.environ.get("BLOGSITE_TEST_DURATIONS", ROOT / "build" / "test-durations.txt")
)
_durations: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_xdist_worker(session.config):
        # The controller gets the reports, and the figures from here.
        session.config.workeroutput["figures"] = list(FIGURES)  # type: ignore[attr-defined]
        return
    if not _durations:
        return
    raw = DURATIONS_FILE.with_suffix(".json")
    durations = dict(_durations)
    if os.environ.get("BLOGSITE_TEST_DURATIONS_MERGE") == "1" and raw.exists():
        durations = {**json.loads(raw.read_text()), **durations}
    by_module: defaultdict[str, float] = defaultdict(float)
    for nodeid, seconds in durations.items():
        by_module[nodeid.split("::", 1)[0]] += seconds
    lines = [f"# {len(durations)} tests, {sum(durations.values()):.0f} s in all", "# by module"]
    lines += [f"{s:8.1f}  {m}" for m, s in sorted(by_module.items(), key=lambda i: -i[1])]
    lines.append("# by test (setup + call + teardown)")
    lines += [f"{s:8.1f}  {n}" for n, s in sorted(durations.items(), key=lambda i: -i[1])]
    DURATIONS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DURATIONS_FILE.write_text("\n".join(lines) + "\n")
    raw.write_text(json.dumps(durations))
