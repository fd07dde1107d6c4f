"""The zero-downtime client's own rules, against a local HTTP server: a test
that counts failed requests is only as good as what it counts as failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import serving
from tests.traffic import STALL_SECONDS, Traffic

PAGE = "the page"


class _Page(BaseHTTPRequestHandler):
    pause = threading.Event()  # set: the next request waits past a stall

    def do_GET(self) -> None:
        if _Page.pause.is_set():
            _Page.pause.clear()
            time.sleep(STALL_SECONDS + 0.5)
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def port() -> Iterator[int]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Page)) as server:
        yield int(server.server_address[1])
    _Page.pause.clear()


def test_a_window_of_answered_requests_has_no_failure(port: int) -> None:
    with Traffic("127.0.0.1", port, "blog.example.test", None, PAGE) as traffic:
        time.sleep(0.5)
    assert traffic.completed
    assert not traffic.failures, traffic.summary()


def test_a_request_that_takes_longer_than_a_stall_fails(port: int) -> None:
    with Traffic("127.0.0.1", port, "blog.example.test", None, PAGE) as traffic:
        time.sleep(0.3)
        _Page.pause.set()
        time.sleep(STALL_SECONDS + 1)
    # The server was slow, not the network: it says so.
    stalls = [f for f in traffic.failures if f.startswith("stall:")]
    assert stalls, traffic.summary()
    assert all("(connected after 0.0s)" in f for f in stalls), stalls


def test_a_window_without_completed_requests_fails(port: int) -> None:
    """No request failed, but for longer than a stall none completed either
    (here: sent too rarely): the window proves nothing for that time."""
    traffic = Traffic("127.0.0.1", port, "blog.example.test", None, PAGE)
    traffic.interval = STALL_SECONDS + 1
    with traffic:
        time.sleep(STALL_SECONDS + 0.5)
    assert traffic.completed
    assert any(f.startswith("gap:") for f in traffic.failures), traffic.summary()
