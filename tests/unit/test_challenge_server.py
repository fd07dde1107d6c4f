"""`blogsite-operator challenge-server` is a real process answering HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blogsite_operator",
            "challenge-server",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                return True
        except OSError:
            return False

    wait_for(answering, timeout=15, what="the challenge server")
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_health_endpoint(server: str) -> None:
    with urllib.request.urlopen(f"{server}/healthz", timeout=2) as response:
        assert response.status == 200
        assert response.read() == b"ok\n"


def test_unknown_token_is_404(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server}/.well-known/acme-challenge/nope", timeout=2)
    assert error.value.code == 404
