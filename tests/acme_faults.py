"""A fault-injecting HTTPS proxy in front of a running Pebble, for chaos tests.

    with running_pebble(env) as pebble, AcmeFaultProxy(pebble) as proxy:
        client_for(proxy.directory_url, trusting=pebble.ca_pem)
        proxy.down()                    # the CA is unreachable
        proxy.fail_randomly(0.3, seed)  # 30 % of requests answer 503 serverInternal
        proxy.rate_limit_orders(60)     # newOrder answers 429 rateLimited, Retry-After: 60
        proxy.refuse_replaces_once()    # the next newOrder naming `replaces`: 409 alreadyReplaced
        proxy.reject_nonces(0.3, seed)  # 30 % of POSTs answer 400 badNonce
        proxy.delay(0.5)                # every answer half a second late
        proxy.pass_through()            # all faults off (same as up())
        proxy.count("newOrder"), proxy.orders_for("www.example.test")

The proxy listens on 127.0.0.1 (or `address`, which Pebble's certificate
must cover: the real node's, for an operator in a pod) under Pebble's own
certificate, so whatever trusts `pebble.ca_pem` trusts it. Pebble builds every URL it returns (the
directory, Location, order and authorization URLs) and the `url` it expects in
a JWS from the request's Host header (wfe/wfe.go: relativeEndpoint and
verifyPOST), so forwarding with Host set to the proxy's own host:port makes
every URL the client sees point at the proxy; no body is rewritten.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import itertools
import json
import random
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509

from tests.pebble import Pebble

Endpoint = Literal[
    "directory",
    "newNonce",
    "newAccount",
    "newOrder",
    "order",
    "authz",
    "challenge",
    "finalize",
    "certificate",
    "renewalInfo",
    "other",
]
Fault = Literal["down", "serverInternal", "rateLimited", "badNonce", "alreadyReplaced"]
# Pebble's paths for resources the directory does not list (wfe/wfe.go, v2.10.1).
PEBBLE_PATHS: tuple[tuple[str, Endpoint], ...] = (
    ("/my-order/", "order"),
    ("/authZ/", "authz"),
    ("/chalZ/", "challenge"),
    ("/finalize-order/", "finalize"),
    ("/certZ/", "certificate"),
)
# Headers that belong to one connection, or that the proxy sets itself.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
NOT_FORWARDED = HOP_BY_HOP | {"host", "accept-encoding", "x-forwarded-proto"}
NOT_RETURNED = HOP_BY_HOP | {"date", "server"}  # BaseHTTPRequestHandler sends its own
USER_AGENT = "acme-fault-proxy"
TIMEOUT = 30.0


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received."""

    time: float  # time.monotonic() when it arrived
    method: str
    path: str  # with the query
    endpoint: Endpoint
    status: int | None  # what the client got; None when the proxy dropped the connection
    identifiers: tuple[str, ...] = ()  # newOrder POSTs: the DNS names ordered
    replaces: str | None = None  # newOrder POSTs: the ARI id the order names (RFC 9773)
    fault: Fault | None = None  # what the proxy did instead of forwarding it to Pebble
    # newOrder, order and finalize requests: which order (the last part of
    # its URL), and the order's status in the answer ("valid": issued).
    order: str | None = None
    order_status: str | None = None


@dataclass(frozen=True)
class OrderSpan:
    """One order as the CA saw it: created at `start`, valid (the certificate
    issued) at `end`, or never."""

    order: str
    start: float
    end: float | None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class AcmeFaultProxy:
    """HTTPS reverse proxy to `upstream` (a started Pebble) with switchable faults."""

    def __init__(self, upstream: Pebble, address: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.address = address
        self._lock = threading.Lock()
        self._log: list[ProxiedRequest] = []
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._down = False
        self._fail_rate = 0.0
        self._random = random.Random(0)  # noqa: S311 - faults, not secrecy
        self._order_retry_after: int | None = None
        self._refuse_replaces = False
        self._nonce_reject_rate = 0.0
        self._delay = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._host = ""  # the proxy's host:port, once started
        self._paths: dict[str, Endpoint] = {}  # directory path -> name, from Pebble's directory

    # Life cycle

    def start(self) -> None:
        assert self._server is None, "already started"
        config = json.loads((self.upstream.state_dir / "pebble-config.json").read_text())
        certificate = Path(config["pebble"]["certificate"])
        _check_covers(certificate, self.address)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certificate, config["pebble"]["privateKey"])
        upstream = urlsplit(self.upstream.directory_url)
        self._upstream_address = (upstream.hostname or "127.0.0.1", upstream.port or 443)
        self._upstream_tls = ssl.create_default_context(cadata=self.upstream.ca_pem.decode())
        self._server = _Server(self, tls, self.address)
        self._host = f"{self.address}:{self.port}"
        self._read_directory(upstream.path)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="acme-fault-proxy", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and close every open client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            still_open = list(self._open)
        for connection in still_open:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> AcmeFaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def directory_url(self) -> str:
        return f"https://{self.address}:{self.port}/dir"

    @property
    def connections(self) -> int:
        """Client connections accepted so far (keep-alive reuses one)."""
        with self._lock:
            return self._connections

    # Faults: any thread, any time

    def down(self) -> None:
        """Answer nothing: every request's connection is closed without a response."""
        with self._lock:
            self._down = True

    def up(self) -> None:
        """Back to plain forwarding: clears every fault."""
        self.pass_through()

    def pass_through(self) -> None:
        with self._lock:
            self._down = False
            self._delay = 0.0
            self._fail_rate = 0.0
            self._order_retry_after = None
            self._refuse_replaces = False
            self._nonce_reject_rate = 0.0

    def fail_randomly(self, rate: float, seed: int) -> None:
        """Answer each request, with probability `rate`, 503 serverInternal."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} is not a probability")
        with self._lock:
            self._fail_rate = rate
            self._random = random.Random(seed)  # noqa: S311 - faults, not secrecy

    def reject_nonces(self, rate: float, seed: int) -> None:
        """Answer each POST, with probability `rate`, 400 badNonce (a CA whose
        nonces went stale, as behind a load balancer of several)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} is not a probability")
        with self._lock:
            self._nonce_reject_rate = rate
            self._random = random.Random(seed)  # noqa: S311 - faults, not secrecy

    def delay(self, seconds: float) -> None:
        """Answer every request `seconds` late (a slow CA): an order then
        takes a while, and can be caught in the middle."""
        with self._lock:
            self._delay = seconds

    def rate_limit_orders(self, retry_after_seconds: int) -> None:
        """Answer newOrder POSTs 429 rateLimited with `Retry-After: retry_after_seconds`."""
        with self._lock:
            self._order_retry_after = retry_after_seconds

    def refuse_replaces_once(self) -> None:
        """Answer the next newOrder that names `replaces` 409 alreadyReplaced,
        as a CA does when another order renewed that certificate already."""
        with self._lock:
            self._refuse_replaces = True

    # The request log

    def requests(self, since: float = 0) -> list[ProxiedRequest]:
        """Requests received at or after `since` (a time.monotonic() value)."""
        with self._lock:
            return [request for request in self._log if request.time >= since]

    def count(self, endpoint: Endpoint | None = None, since: float = 0) -> int:
        return sum(
            1
            for request in self.requests(since)
            if endpoint is None or request.endpoint == endpoint
        )

    def orders_for(self, name: str) -> list[ProxiedRequest]:
        """newOrder requests whose identifiers include `name`."""
        return [
            request
            for request in self.requests()
            if request.endpoint == "newOrder" and name in request.identifiers
        ]

    def order_spans(self, name: str) -> list[OrderSpan]:
        """The orders created for `name`, each with when it became valid."""
        requests = self.requests()
        spans = []
        for created in requests:
            if created.endpoint != "newOrder" or name not in created.identifiers:
                continue
            if created.status != 201 or created.order is None:
                continue
            valid = [
                r.time
                for r in requests
                if r.order == created.order
                and r.order_status == "valid"
                and r.endpoint != "newOrder"
            ]
            spans.append(OrderSpan(created.order, created.time, min(valid, default=None)))
        return spans

    def orders_in_flight(self, since: float = 0) -> int:
        """Orders created at or after `since` and not (yet) valid nor invalid."""
        requests = self.requests(since)
        ended = {r.order for r in requests if r.order_status in ("valid", "invalid")}
        return sum(
            1
            for r in requests
            if r.endpoint == "newOrder" and r.status == 201 and r.order not in ended
        )

    # Inside

    def _read_directory(self, path: str) -> None:
        directory = self._forward("GET", path, {"User-Agent": USER_AGENT}, b"")
        if directory is None or directory.status != 200:
            raise RuntimeError(f"Pebble's directory did not answer: {directory}")
        self._paths = {path: "directory"}
        for name in ("newNonce", "newAccount", "newOrder", "renewalInfo"):
            url = json.loads(directory.body).get(name)
            if isinstance(url, str):
                self._paths[urlsplit(url).path] = name

    def _endpoint(self, path: str) -> Endpoint:
        path = urlsplit(path).path
        if path in self._paths:
            return self._paths[path]
        for prefix, name in self._paths.items():
            # ARI's URL is its directory entry followed by the certificate's id.
            if name == "renewalInfo" and path.startswith(prefix.rstrip("/") + "/"):
                return name
        for prefix, name in PEBBLE_PATHS:
            if path.startswith(prefix):
                return name
        return "other"

    def _handle(self, method: str, path: str, headers: Message, body: bytes) -> _Answer | None:
        """The answer to one request (None: drop the connection), logged."""
        received = time.monotonic()
        endpoint = self._endpoint(path)
        new_order = (endpoint, method) == ("newOrder", "POST")
        identifiers, replaces = _order_identifiers(body) if new_order else ((), None)
        with self._lock:
            fault, retry_after = self._fault(method, endpoint), self._order_retry_after
            if fault is None and replaces and self._refuse_replaces:
                fault, self._refuse_replaces = "alreadyReplaced", False
            delay = self._delay
        time.sleep(delay)
        answer: _Answer | None
        if fault == "down":
            answer = None
        elif fault == "rateLimited":
            detail = (
                f"too many new orders, retry after {retry_after} s (injected by the test proxy)"
            )
            retry = [("Retry-After", str(retry_after))]
            answer = self._problem(method, 429, "rateLimited", detail, retry)
        elif fault == "alreadyReplaced":
            detail = f"certificate {replaces} already replaced (injected by the test proxy)"
            answer = self._problem(method, 409, "alreadyReplaced", detail)
        elif fault == "badNonce":
            answer = self._problem(method, 400, "badNonce", "injected by the test proxy")
        elif fault == "serverInternal":
            answer = self._problem(method, 503, "serverInternal", "injected by the test proxy")
        else:
            answer = self._forward(method, path, dict(headers.items()), body)
        status = answer.status if answer else None
        order, order_status = _order_of(endpoint, path, answer)
        with self._lock:
            self._log.append(
                ProxiedRequest(
                    received,
                    method,
                    path,
                    endpoint,
                    status,
                    identifiers,
                    replaces,
                    fault,
                    order,
                    order_status,
                )
            )
        return answer

    def _fault(self, method: str, endpoint: Endpoint) -> Fault | None:
        """The fault for this request, if any; called under the lock."""
        if self._down:
            return "down"
        if self._order_retry_after is not None and (method, endpoint) == ("POST", "newOrder"):
            return "rateLimited"
        if self._fail_rate > 0 and self._random.random() < self._fail_rate:
            return "serverInternal"
        rejecting = method == "POST" and self._nonce_reject_rate > 0
        if rejecting and self._random.random() < self._nonce_reject_rate:
            return "badNonce"
        return None

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Answer | None:
        """Pebble's answer, or None when Pebble cannot be reached."""
        outgoing = {k: v for k, v in headers.items() if k.lower() not in NOT_FORWARDED}
        # Pebble's URLs (and the JWS `url` it expects) follow the Host header.
        outgoing["Host"] = self._host
        connection = http.client.HTTPSConnection(
            *self._upstream_address, context=self._upstream_tls, timeout=TIMEOUT
        )
        try:
            connection.request(method, path, body=body or None, headers=outgoing)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in NOT_RETURNED]
        return _Answer(response.status, kept, payload)

    def _problem(
        self,
        method: str,
        status: int,
        kind: str,
        detail: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> _Answer:
        """An RFC 8555 problem; to a POST with a fresh nonce from Pebble, as a CA sends."""
        problem = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail, "status": status}
        headers = [
            ("Content-Type", "application/problem+json"),
            ("Link", f'<{self.directory_url}>;rel="index"'),
            *(extra or []),
        ]
        if method == "POST" and (nonce := self._fresh_nonce()):
            headers.append(("Replay-Nonce", nonce))
        return _Answer(status, headers, json.dumps(problem).encode())

    def _fresh_nonce(self) -> str | None:
        new_nonce = next((p for p, name in self._paths.items() if name == "newNonce"), None)
        answer = new_nonce and self._forward("HEAD", new_nonce, {"User-Agent": USER_AGENT}, b"")
        if not answer:
            return None
        return next((v for k, v in answer.headers if k.lower() == "replay-nonce"), None)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: AcmeFaultProxy, tls: ssl.SSLContext, address: str) -> None:
        self.proxy = proxy
        self.tls = tls
        super().__init__((address, 0), _Handler)

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        # The TLS handshake happens here, in the connection's own thread.
        assert isinstance(request, socket.socket)
        request.settimeout(TIMEOUT)
        with self.tls.wrap_socket(request, server_side=True) as connection:
            self.proxy._opened(connection)
            try:
                _Handler(connection, client_address, self)
            finally:
                self.proxy._closed(connection)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients and stop() close connections; that is no error worth a traceback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has an exact Content-Length
    timeout = TIMEOUT
    server: _Server

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = self.server.proxy._handle(self.command, self.path, self.headers, body)
        if answer is None:  # "down": no response at all
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.status not in (204, 304):
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


def orders_naming_what_they_replace(proxy: AcmeFaultProxy) -> list[ProxiedRequest]:
    """The newOrder POSTs the CA answered (not a badNonce the client sent
    again at once), checked: the first replaces nothing, the proxy refused
    `replaces` once (refuse_replaces_once), and an order goes without
    `replaces` only right after the CA refused one that named it (the
    injected alreadyReplaced; Pebble itself may refuse one it cannot trace)."""
    orders = [r for r in proxy.requests() if r.endpoint == "newOrder" and r.method == "POST"]
    answered = [r for r in orders if r.status is not None and r.status != 400]
    assert answered[0].replaces is None, answered[0]
    refused = [r for r in answered if r.fault == "alreadyReplaced"]
    assert len(refused) == 1, refused
    for earlier, order in itertools.pairwise(answered):
        if order.replaces is None:
            assert earlier.replaces is not None, (earlier, order)
            assert earlier.status is not None, (earlier, order)
            assert earlier.status >= 400, (earlier, order)
    assert refused[0] is not answered[-1], refused
    assert answered[answered.index(refused[0]) + 1].replaces is None
    return answered


def issued_without_replaces(answered: list[ProxiedRequest]) -> list[ProxiedRequest]:
    """The orders the CA's limits count: answered, and naming nothing to replace."""
    return [r for r in answered if r.replaces is None and r.status is not None and r.status < 400]


def _check_covers(certificate: Path, address: str) -> None:
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if ipaddress.ip_address(address) not in names.get_values_for_type(x509.IPAddress):
        raise RuntimeError(f"{certificate} does not cover {address}")


def _order_of(
    endpoint: Endpoint, path: str, answer: _Answer | None
) -> tuple[str | None, str | None]:
    """Which order a request is about and the status the answer gives it."""
    if endpoint not in ("newOrder", "order", "finalize") or answer is None:
        return None, None
    if endpoint == "newOrder":
        location = next((v for k, v in answer.headers if k.lower() == "location"), "")
        order = urlsplit(location).path.rstrip("/").rpartition("/")[2] or None
    else:
        order = urlsplit(path).path.rstrip("/").rpartition("/")[2] or None
    try:
        status = json.loads(answer.body).get("status") if answer.status < 300 else None
    except (ValueError, AttributeError):
        status = None
    return order, status if isinstance(status, str) else None


def _order_identifiers(body: bytes) -> tuple[tuple[str, ...], str | None]:
    """The identifiers' values and `replaces` in a newOrder flattened JWS;
    ((), None) when unreadable."""
    try:
        payload = json.loads(body)["payload"]
        order = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        names = tuple(str(identifier["value"]) for identifier in order["identifiers"])
        return names, order.get("replaces")
    except (ValueError, KeyError, TypeError):
        return (), None
