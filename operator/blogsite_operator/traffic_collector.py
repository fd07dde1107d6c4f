"""The site's traffic collector, in the cert-refresh pod: what users got, by pool.

Every frontend replica sends one syslog line (UDP) per request it proxies to
daedalus (render/nginx.py, TRAFFIC_LOG_FIELDS): the pool (stable or canary),
the status the client got, the status of each upstream tried and their
times. The collector keeps cumulative counts per pool, which the operator
reads (GET /traffic) to judge a canary (policies/canary.py), and which
Prometheus may scrape (GET /metrics) as the blog's own traffic figures.

UDP may drop a line under load: the counts are then a sample, and the
analysis judges shares, which a sample keeps. Standard library only: this
runs in the cert-refresh pod.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from dataclasses import dataclass, field

from blogsite_operator.policies.canary import LATENCY_BOUNDS

# A line as nginx sends it, e.g. `<190>Dec  5 15:50:00 blogsite: daedalus_canary|200|502,
# 200|0.000, 0.002` (one line: the pool's attempt refused, stable answered).
LINE = re.compile(
    rb"^<\d{1,3}>.*? blogsite: (?P<pool>[a-z_]{1,32})\|(?P<status>\d{3})\|"
    rb"(?P<upstream_status>[^|]{0,200})\|(?P<times>[^|]{0,200})$"
)
STATUS = re.compile(rb"\d{3}|-")
TIME = re.compile(rb"\d+(?:\.\d+)?")
POOLS = ("daedalus", "daedalus_canary")
MAX_DATAGRAM = 2048


@dataclass
class PoolTally:
    requests: int = 0
    failed: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    seconds: float = 0.0
    by_class: dict[str, int] = field(default_factory=dict)  # "2xx" -> count, what clients got

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "latency": list(self.latency),
            "seconds": round(self.seconds, 6),
            "statuses": dict(sorted(self.by_class.items())),
        }


@dataclass(frozen=True)
class Request:
    pool: str
    status: int
    failed: bool
    seconds: float


def parse(datagram: bytes) -> Request | None:
    """One request from one syslog line, or None for anything else."""
    match = LINE.match(datagram.rstrip(b"\n"))
    if match is None or match["pool"].decode() not in POOLS:
        return None
    status = int(match["status"])
    tried = STATUS.findall(match["upstream_status"])
    first = tried[0] if tried else b"-"
    # The pool's own attempt decides: a refused or timed-out canary (502, 504)
    # is its failure even when its backup, stable, then answered the client.
    failed = first.startswith(b"5") if first != b"-" else status >= 500 and status != 599
    seconds = sum(float(t) for t in TIME.findall(match["times"]))
    return Request(match["pool"].decode(), status, failed, seconds)


class Collector:
    def __init__(self) -> None:
        self.boot = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._pools = {pool: PoolTally() for pool in POOLS}
        self.dropped = 0  # lines that were not requests

    def count(self, request: Request) -> None:
        with self._lock:
            tally = self._pools[request.pool]
            tally.requests += 1
            tally.failed += request.failed
            tally.seconds += request.seconds
            for index, bound in enumerate(LATENCY_BOUNDS):
                if request.seconds <= bound:
                    tally.latency[index] += 1
            status_class = f"{request.status // 100}xx"
            tally.by_class[status_class] = tally.by_class.get(status_class, 0) + 1

    def receive(self, datagram: bytes) -> None:
        request = parse(datagram)
        if request is None:
            with self._lock:
                self.dropped += 1
        else:
            self.count(request)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "boot": self.boot,
                "pools": {pool: tally.as_dict() for pool, tally in self._pools.items()},
            }

    def metrics(self, versions: dict[str, str]) -> str:
        """Prometheus text: requests by status class and a latency histogram,
        per pool and the version it runs (`versions`: pool -> version)."""
        lines = [
            "# HELP blogsite_requests_total Requests the frontends proxied to daedalus.",
            "# TYPE blogsite_requests_total counter",
        ]
        snapshot = self.snapshot()["pools"]
        assert isinstance(snapshot, dict)  # noqa: S101 - built just above
        for pool, tally in snapshot.items():
            labels = f'pool="{pool}",version="{versions.get(pool, "")}"'
            for status_class, count in tally["statuses"].items():
                lines.append(f'blogsite_requests_total{{{labels},code="{status_class}"}} {count}')
        lines += [
            "# HELP blogsite_request_duration_seconds Time daedalus took, as nginx saw it.",
            "# TYPE blogsite_request_duration_seconds histogram",
        ]
        for pool, tally in snapshot.items():
            labels = f'pool="{pool}",version="{versions.get(pool, "")}"'
            requests = tally["requests"]
            for bound, count in zip(LATENCY_BOUNDS, tally["latency"], strict=True):
                lines.append(
                    f'blogsite_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {count}'
                )
            lines.append(
                f'blogsite_request_duration_seconds_bucket{{{labels},le="+Inf"}} {requests}'
            )
            lines.append(f"blogsite_request_duration_seconds_sum{{{labels}}} {tally['seconds']}")
            lines.append(f"blogsite_request_duration_seconds_count{{{labels}}} {tally['requests']}")
        return "\n".join(lines) + "\n"


def listen(collector: Collector, address: str, port: int, stop: threading.Event) -> socket.socket:
    """Receive syslog datagrams in a thread of their own until `stop`."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(1.0)

    def run() -> None:
        while not stop.is_set():
            try:
                datagram, _ = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            collector.receive(datagram)

    threading.Thread(target=run, name="traffic-collector", daemon=True).start()
    return sock
