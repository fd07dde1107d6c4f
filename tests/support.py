"""Helpers shared by unit and integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Lines a test measured, printed in the run's summary (tests/conftest.py).
FIGURES: list[str] = []


def worker_port(port: int) -> int:
    """A fixed port of the tests, moved for each pytest-xdist worker (gw0,
    gw1, ...) by 300 a worker, so the Pebbles of parallel tests never meet
    (every fixed base port differs from the others by less than that)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return port + 300 * int(worker.removeprefix("gw") or 0)


ROOT = Path(__file__).resolve().parents[1]


def built_tool(name: str, variable: str) -> Path:
    """The bin directory `hack/build-tools.sh NAME` prints as VARIABLE=PATH:
    the tool at the version hack/versions.env pins, built if missing (a
    build that fails fails the test)."""
    result = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), name],
        capture_output=True,
        text=True,
        check=True,
    )
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Path(paths[variable])


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


@dataclass(frozen=True)
class AuditMark:
    """Where the audit log stood: its file (by inode) and the size then."""

    inode: int
    offset: int


def audit_mark(audit_log: Path) -> AuditMark:
    status = audit_log.stat()
    return AuditMark(status.st_ino, status.st_size)


def audit_lines(audit_log: Path, mark: AuditMark) -> Iterator[bytes]:
    """Every line written after `mark`, across rotations: the API server
    renames the log at 100 MB (lumberjack's default size), which a
    1000-site run passes."""
    files = sorted(audit_log.parent.glob("audit*.log"), key=lambda path: path.stat().st_mtime)
    started = False
    for path in files:
        if path.stat().st_ino == mark.inode:
            started, offset = True, mark.offset
        elif not started:
            continue
        else:
            offset = 0
        with path.open("rb") as log:
            log.seek(offset)
            yield from log


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """`server` answering from a thread of its own until the block ends."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
