"""Behind load balancers and proxies, through real nginx: who the client is,
and which scheme it used, believed from trusted peers only.

The test client connects from 127.0.0.1: a site that trusts 127.0.0.0/8 sees
it as its load balancer; one that trusts only 198.18.0.0/15 sees it as any
client on the internet, whose headers may be forged.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from blogsite_operator.issuance.issuer import _wait_for_answer
from tests.nginx_harness import RunningNginx, Stub, json_body, launch_nginx

SITE: dict[str, Any] = {
    "domains": ["lethain.com"],
    "daedalus": {"image": "ghcr.io/example/daedalus:1"},
    "tls": {"secretName": "tls"},
}
CLIENT = "203.0.113.7"  # where the proxy says the request came from
FORGED = {"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"}


def site(**frontend: Any) -> dict[str, Any]:
    return {**SITE, "frontend": frontend}


def http(nginx: RunningNginx, headers: dict[str, str], path: str = "/") -> Any:
    connection = HTTPConnection("127.0.0.1", nginx.facts.http_port, timeout=5)
    connection.request("GET", path, headers={"Host": "lethain.com", **headers})
    return connection.getresponse()


def seen_by_daedalus(response: Any) -> dict[str, str]:
    assert response.status == 200, response.status
    seen = json_body(response)
    assert seen["upstream"] == "daedalus"
    headers: dict[str, str] = seen["headers"]
    return headers


class TestBehindATrustedProxy:
    @pytest.fixture
    def nginx(self, start_nginx: Any) -> RunningNginx:
        served: RunningNginx = start_nginx(site(trustedProxies=["127.0.0.0/8"], http="redirect"))
        return served

    def test_the_app_sees_the_clients_address_and_scheme(self, nginx: RunningNginx) -> None:
        headers = seen_by_daedalus(http(nginx, FORGED))
        assert headers["x-real-ip"] == CLIENT
        assert headers["x-forwarded-for"] == CLIENT
        assert headers["x-forwarded-proto"] == "https"

    def test_no_redirect_loop_for_https_the_proxy_terminated(self, nginx: RunningNginx) -> None:
        seen_by_daedalus(http(nginx, {"X-Forwarded-Proto": "https"}))
        response = http(nginx, {"X-Forwarded-Proto": "http"}, "/a?b=1")
        assert response.status == 301
        assert response.getheader("Location") == "https://lethain.com/a?b=1"

    def test_a_chain_of_proxies_gives_its_last_untrusted_address(self, nginx: RunningNginx) -> None:
        chain = {
            "X-Forwarded-For": f"198.51.100.1, {CLIENT}, 127.0.0.9",
            "X-Forwarded-Proto": "https",
        }
        assert seen_by_daedalus(http(nginx, chain))["x-real-ip"] == CLIENT


@pytest.mark.parametrize(
    "frontend",
    [{}, {"trustedProxies": ["198.18.0.0/15"]}],
    ids=["no-trusted-proxies", "client-not-among-them"],
)
class TestAnUntrustedClient:
    def test_cannot_forge_its_address_nor_the_scheme(
        self, start_nginx: Any, frontend: dict[str, Any]
    ) -> None:
        nginx = start_nginx(site(**frontend))
        headers = seen_by_daedalus(http(nginx, FORGED))
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        over_tls = seen_by_daedalus(nginx.https("lethain.com"))
        assert over_tls["x-forwarded-proto"] == "https"

    def test_is_redirected_to_https_whatever_it_claims(
        self, start_nginx: Any, frontend: dict[str, Any]
    ) -> None:
        nginx = start_nginx(site(http="redirect", **frontend))
        response = http(nginx, FORGED)
        assert response.status == 301


def proxied_request(nginx: RunningNginx, port: int, proxy_line: bytes, tls: bool) -> bytes:
    """One request after a PROXY protocol v1 line, as a load balancer sends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(proxy_line)
        sock: socket.socket = raw
        if tls:
            context = ssl.create_default_context(cafile=str(nginx.ca_file))
            sock = context.wrap_socket(raw, server_hostname="lethain.com")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: lethain.com\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def headers_in(reply: bytes) -> dict[str, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers: dict[str, str] = json.loads(body)["headers"]
    return headers


class TestProxyProtocol:
    LINE = f"PROXY TCP4 {CLIENT} 198.51.100.2 40000 443\r\n".encode()

    @pytest.mark.parametrize("tls", [False, True], ids=["port-80", "port-443"])
    def test_the_client_address_comes_from_a_trusted_balancer(
        self, start_nginx: Any, tls: bool
    ) -> None:
        nginx = start_nginx(site(trustedProxies=["127.0.0.0/8"], proxyProtocol=True))
        port = nginx.facts.https_port if tls else nginx.facts.http_port
        headers = headers_in(proxied_request(nginx, port, self.LINE, tls))
        assert headers["x-real-ip"] == CLIENT
        assert headers["x-forwarded-for"] == CLIENT

    def test_not_from_an_untrusted_peer(self, start_nginx: Any) -> None:
        nginx = start_nginx(site(trustedProxies=["198.18.0.0/15"], proxyProtocol=True))
        reply = proxied_request(nginx, nginx.facts.http_port, self.LINE, tls=False)
        assert headers_in(reply)["x-real-ip"] == "127.0.0.1"

    def test_a_connection_without_it_is_refused_but_health_stays_plain(
        self, start_nginx: Any
    ) -> None:
        nginx = start_nginx(site(trustedProxies=["127.0.0.0/8"], proxyProtocol=True))
        reply = proxied_request(nginx, nginx.facts.http_port, b"", tls=False)
        assert not reply.startswith(b"HTTP/1.1 200"), reply[:100]
        health = nginx.http("anything", "/healthz", port=nginx.facts.health_port)
        assert health.status == 200


class FixedAnswer(BaseHTTPRequestHandler):
    """cert-refresh's part: one challenge's answer."""

    def do_GET(self) -> None:
        body = b"token-1.key-authorization" if self.path.endswith("/token-1") else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_the_self_check_speaks_the_proxy_protocol_to_such_a_frontend(
    tmp_path: Path, upstreams: tuple[Stub, Stub]
) -> None:
    """The operator's self-check fetches each answer through the frontend as
    the CA will; with proxyProtocol it opens with a PROXY line, as the load
    balancer does, or the frontend would refuse it."""
    answers = ThreadingHTTPServer(("127.0.0.1", 0), FixedAnswer)
    threading.Thread(target=answers.serve_forever, daemon=True).start()
    raw = site(trustedProxies=["127.0.0.0/8"], proxyProtocol=True)
    nginx, process = launch_nginx(
        raw, tmp_path / "nginx", (upstreams[0].address, f"127.0.0.1:{answers.server_address[1]}")
    )
    try:
        address = f"127.0.0.1:{nginx.facts.http_port}"
        _wait_for_answer(
            address, "lethain.com", "token-1", "token-1.key-authorization", proxy_protocol=True
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        answers.shutdown()
