"""Helpers shared by unit and integration tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

# Lines a test measured, printed in the run's summary (tests/conftest.py).
FIGURES: list[str] = []


def worker_port(port: int) -> int:
    """A fixed port of the tests, moved for each pytest-xdist worker (gw0,
    gw1, ...) by 300 a worker, so the Pebbles of parallel tests never meet
    (every fixed base port differs from the others by less than that)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return port + 300 * int(worker.removeprefix("gw") or 0)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = ""
) -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")
