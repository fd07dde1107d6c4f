"""Real HTTP(S) requests to a site's frontend, one at a time or without pause.

`Traffic` is the zero-downtime client: it opens a new connection for every
request (so each one is balanced afresh by kube-proxy to a Ready pod) and
counts every request that did not come back as the page expected, every
request that took longer than a second (a stall), and every second of the
window in which no request completed (a gap: a window with no requests
proves nothing).
"""

from __future__ import annotations

import http.client
import itertools
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str
    peer_certificate: bytes | None = None  # DER, for HTTPS
    # Seconds until connected (TCP and TLS): a stall here is the network's
    # (a SYN retried after 1 s), one after it the server's.
    connected_after: float = 0.0


def tls_context(root_pem: bytes, *, check_hostname: bool = True) -> ssl.SSLContext:
    """Trust only `root_pem` (Pebble's root, or a placeholder's own certificate)."""
    context = ssl.create_default_context(cadata=root_pem.decode("ascii"))
    context.check_hostname = check_hostname
    return context


def request(
    address: str,
    port: int,
    host: str,
    path: str = "/",
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float = 5,
) -> Response:
    """GET `path` from address:port with `host` as Host header (and SNI over TLS)."""
    connection: http.client.HTTPConnection
    if tls is not None:
        connection = _SniConnection(address, port, host, tls, timeout)
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.connect()
        connected_after = time.monotonic() - started
        # Read now: the connection lets go of its socket once the response is read.
        peer = None
        if isinstance(connection.sock, ssl.SSLSocket):
            peer = connection.sock.getpeercert(binary_form=True)
        connection.request("GET", path, headers={"Host": host, "Connection": "close"})
        response = connection.getresponse()
        body = response.read(65536).decode("utf-8", "replace")
        return Response(response.status, dict(response.getheaders()), body, peer, connected_after)
    finally:
        connection.close()


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to an address while naming another host in SNI and certificate checks."""

    def __init__(
        self, address: str, port: int, server_name: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self._server_name)


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when it ended
    version: str
    ok: bool
    failure: str = ""  # what went wrong, when not ok


# A request slower than this, or a stretch this long with none completed,
# is a failure: a user would notice.
STALL_SECONDS = 1.0


@dataclass
class Traffic:
    """Requests without pause from a background thread, until stopped.

    A request fails when it raises, times out, takes longer than
    STALL_SECONDS, or does not answer 200 with `expect` in the body; the
    window fails for every gap of STALL_SECONDS without a completed request,
    from its start to its end.
    """

    address: str
    port: int
    host: str
    tls: ssl.SSLContext | None
    expect: str
    # Seconds between the starts of two requests: 0.05 is about 20 a second,
    # enough to see any gap in serving.
    interval: float = 0.05
    # Asked in turn: the stand-in's ?delay= makes answers jitter.
    paths: tuple[str, ...] = ("/",)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    completed: list[float] = field(default_factory=list)  # time.monotonic() of each
    # Every request: when it ended, the version that answered (the stand-in's
    # X-Daedalus-Version, "" for none) and whether it succeeded.
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _began: float = 0.0

    def __enter__(self) -> Traffic:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
            ended = time.monotonic()
            marks = [self._began, *self.completed, ended]
            for earlier, later in itertools.pairwise(marks):
                if later - earlier > STALL_SECONDS:
                    at = earlier - self._began
                    self.failures.append(
                        f"gap: no request completed for {later - earlier:.1f}s at +{at:.1f}s"
                    )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sent += 1
            version, ok, failures = "", False, len(self.failures)
            try:
                path = self.paths[(self.sent - 1) % len(self.paths)]
                response = request(self.address, self.port, self.host, path, tls=self.tls)
                took = time.monotonic() - started
                version = response.headers.get("X-Daedalus-Version", "")
                if response.status != 200 or self.expect not in response.body:
                    self.failures.append(f"{response.status}: {response.body[:200]!r}")
                elif took > STALL_SECONDS:
                    self.failures.append(
                        f"stall: {took:.1f}s for one request "
                        f"(connected after {response.connected_after:.1f}s)"
                    )
                else:
                    self.completed.append(time.monotonic())
                    ok = True
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            failure = self.failures[-1] if len(self.failures) > failures else ""
            self.answers.append(Answer(time.monotonic(), version, ok, failure[:200]))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def summary(self) -> str:
        shown = "; ".join(self.failures[:5])
        return f"{self.sent} requests, {len(self.failures)} failed" + (
            f" ({shown})" if shown else ""
        )
