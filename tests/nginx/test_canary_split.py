"""The canary split at the frontend, with its real parts: the rendered
nginx.conf on the frontend image's nginx, the weights follower script
(deploy/frontend/canary-weights) long-polling cert-refresh's handler, and
the traffic collector receiving nginx's syslog lines."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse, RemoteDisconnected
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from blogsite_operator.challenge_server import CANARY_WEIGHT_KEY, Answers, make_handler
from blogsite_operator.render.nginx import CANARY_SPLIT_FILE, canary_split
from blogsite_operator.traffic_collector import Collector, listen
from tests.nginx_harness import ROOT, RunningNginx, Stub, launch_nginx, start_stub
from tests.support import free_port, wait_for

SPEC = {"domains": ["canary.example"], "daedalus": {"image": "ghcr.io/example/daedalus:1"}}
FOLLOWER = ROOT / "deploy" / "frontend" / "canary-weights"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Split:
    nginx: RunningNginx
    answers: Answers
    collector: Collector
    canary: Stub
    workdir: Path
    follower_log: Path
    answered: Counter[str] = field(default_factory=Counter)  # every answer so far

    def set_weight(self, weight: int) -> None:
        self.answers.replace("ns", "blog-acme-http01", {CANARY_WEIGHT_KEY: str(weight)})

    def answered_by(self, requests: int) -> Counter[str]:
        """Who answered each of `requests` requests, on one kept-alive connection
        (opened again when a reload closed it, as browsers do)."""
        seen: Counter[str] = Counter()
        connection = HTTPConnection("127.0.0.1", self.nginx.facts.http_port, timeout=5)
        try:
            for _ in range(requests):
                try:
                    response = self._get(connection)
                except (RemoteDisconnected, ConnectionResetError):
                    connection.close()
                    response = self._get(connection)
                body = response.read()
                answered = json.loads(body)["upstream"] if response.status == 200 else None
                seen[answered or str(response.status)] += 1
        finally:
            connection.close()
        self.answered.update(seen)
        return seen

    @staticmethod
    def _get(connection: HTTPConnection) -> HTTPResponse:
        connection.request("GET", "/", headers={"Host": "canary.example"})
        return connection.getresponse()

    def counted(self) -> dict[str, int]:
        pools = self.collector.snapshot()["pools"]
        assert isinstance(pools, dict)
        return {pool: tally["requests"] for pool, tally in pools.items()}

    def failed(self) -> dict[str, int]:
        pools = self.collector.snapshot()["pools"]
        assert isinstance(pools, dict)
        return {pool: tally["failed"] for pool, tally in pools.items()}


@pytest.fixture
def start_split(tmp_path: Path, upstreams: tuple[Stub, Stub]) -> Iterator[Callable[..., Split]]:
    """A split whose canary is a stub answering "canary", or `canary_address`."""
    stop = threading.Event()
    started: list[subprocess.Popen[bytes]] = []
    servers: list[ThreadingHTTPServer] = []

    def start(canary_address: str | None = None) -> Split:
        stable, challenge = upstreams
        canary = start_stub("canary")
        servers.append(canary.server)
        answers, collector = Answers(), Collector()
        answers.synced.set()
        traffic_port = free_udp_port()
        listen(collector, "127.0.0.1", traffic_port, stop)
        desk = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(answers, collector=collector))
        desk.daemon_threads = True
        servers.append(desk)
        threading.Thread(target=desk.serve_forever, daemon=True).start()
        running, nginx = launch_nginx(
            SPEC,
            tmp_path,
            (stable.address, challenge.address),
            tls=False,
            canary=canary_address or canary.address,
            traffic_log=f"127.0.0.1:{traffic_port}",
        )
        follower_log = tmp_path / "canary-weights.log"
        with follower_log.open("wb") as log:
            follower = subprocess.Popen(
                [
                    "bash",
                    str(FOLLOWER),
                    f"127.0.0.1:{desk.server_address[1]}",
                    str(tmp_path / CANARY_SPLIT_FILE),
                    str(tmp_path / "nginx.pid"),
                    canary_address or canary.address,
                ],
                stderr=log,
            )
        started.extend([follower, nginx])
        return Split(running, answers, collector, canary, tmp_path, follower_log)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)
    for server in servers:
        server.shutdown()
    stop.set()


@pytest.fixture
def split(start_split: Callable[..., Split]) -> Split:
    return start_split()


def test_the_canary_gets_its_share_by_reload_and_every_request_is_counted_by_pool(
    split: Split,
) -> None:
    assert split.answered_by(100) == Counter({"daedalus": 100})  # share 0: no file at all
    split.set_weight(30)
    split_file = split.workdir / CANARY_SPLIT_FILE
    wait_for(lambda: split_file.exists() and split_file.read_text() == canary_split(30), timeout=10)
    wait_for(lambda: split.answered_by(20)["canary"], timeout=10, what="a canary answer")
    seen = split.answered_by(1000)
    assert 230 <= seen["canary"] <= 370, seen  # 30 %, give or take binomial noise
    assert seen["canary"] + seen["daedalus"] == 1000

    # Every request reached the collector, under its pool.
    def counted() -> tuple[int, int]:
        return split.counted()["daedalus"], split.counted()["daedalus_canary"]

    wait_for(
        lambda: counted() == (split.answered["daedalus"], split.answered["canary"]),
        timeout=5,
        what="the collector's counts to match the client's",
    )


def test_a_revert_reaches_the_frontend_within_a_long_poll_round_trip(split: Split) -> None:
    split.set_weight(50)
    wait_for(lambda: split.answered_by(20)["canary"], timeout=10, what="a canary answer")
    reverted = time.monotonic()
    split.set_weight(0)
    last_canary, stable_in_a_row = reverted, 0
    while stable_in_a_row < 100:
        assert time.monotonic() - reverted < 10, "the canary still answers 10 s after the revert"
        if split.answered_by(1)["canary"]:
            last_canary, stable_in_a_row = time.monotonic(), 0
        else:
            stable_in_a_row += 1
    assert last_canary - reverted < 1.0


def test_a_share_waits_until_the_canary_answers_at_its_address(
    start_split: Callable[..., Split],
) -> None:
    """The canary's first pod is Ready before kube-proxy routes its Service:
    the follower takes the share only once the address nginx uses answers."""
    port = free_port()
    split = start_split(canary_address=f"127.0.0.1:{port}")
    split.set_weight(50)
    wait_for(
        lambda: "waiting for 127.0.0.1" in split.follower_log.read_text(),
        timeout=10,
        what="the follower waiting for the canary",
    )
    split_file = split.workdir / CANARY_SPLIT_FILE
    assert not split_file.exists()
    assert split.answered_by(100) == Counter({"daedalus": 100})
    assert not split.failed().get("daedalus_canary"), split.failed()
    late = start_stub("canary", port)
    try:
        wait_for(split_file.exists, timeout=10, what="the share, once the canary answers")
        assert split_file.read_text() == canary_split(50)
        wait_for(lambda: split.answered_by(20)["canary"], timeout=10, what="a canary answer")
    finally:
        late.server.shutdown()
        late.server.server_close()


def test_a_refused_canary_is_counted_failed_while_stable_answers_the_client(
    start_split: Callable[..., Split],
) -> None:
    port = free_port()
    listening = socket.create_server(("127.0.0.1", port))  # for the follower's check alone
    split = start_split(canary_address=f"127.0.0.1:{port}")
    split.set_weight(50)
    split_file = split.workdir / CANARY_SPLIT_FILE
    wait_for(lambda: split_file.exists() and split_file.read_text() == canary_split(50), timeout=10)
    listening.close()  # the canary's pods are gone under their share (a crash, a deletion)
    wait_for(
        lambda: split.answered_by(10) and split.failed()["daedalus_canary"],
        timeout=10,
        what="a refused canary request",
    )
    before = split.failed()
    seen = split.answered_by(200)
    assert seen == Counter({"daedalus": 200})  # the backup, stable, answered every one
    wait_for(
        lambda: split.failed()["daedalus_canary"] - before["daedalus_canary"] >= 50,
        timeout=5,
        what="the refused canary requests counted as failed",
    )
    assert split.failed()["daedalus"] == before["daedalus"]
