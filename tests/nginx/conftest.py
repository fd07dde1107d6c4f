"""Real nginx for these tests: see tests/nginx_harness.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nginx_harness import RunningNginx, Stub, launch_nginx, start_stub


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.nginx)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[tuple[Stub, Stub]]:
    daedalus, challenge = start_stub("daedalus"), start_stub("cert-refresh")
    yield daedalus, challenge
    for stub in (daedalus, challenge):
        stub.server.shutdown()


@pytest.fixture
def start_nginx(tmp_path: Path, upstreams: tuple[Stub, Stub]) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(raw_spec: dict[str, Any], tls: bool = True) -> RunningNginx:
        running, process = launch_nginx(
            raw_spec,
            tmp_path / f"nginx-{len(processes)}",
            (upstreams[0].address, upstreams[1].address),
            tls=tls,
        )
        processes.append(process)
        return running

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
