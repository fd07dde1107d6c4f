"""Every routing rule of the frontend, through real nginx and real HTTP/TLS."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
from typing import Any

import pytest

from tests.nginx_harness import RunningNginx, SniConnection, json_body

SITE: dict[str, Any] = {
    "domains": ["lethain.com", "www.lethain.com"],
    "redirectDomains": ["willarson.com", "www.willarson.com"],
    "daedalus": {"image": "ghcr.io/example/daedalus:1"},
    "tls": {"secretName": "tls"},
}


def site(**changes: Any) -> dict[str, Any]:
    return {**SITE, **changes}


@pytest.fixture
def serving(start_nginx: Any) -> RunningNginx:
    nginx: RunningNginx = start_nginx(site(frontend={"http": "serve"}))
    return nginx


@pytest.fixture
def redirecting(start_nginx: Any) -> RunningNginx:
    nginx: RunningNginx = start_nginx(site(frontend={"http": "redirect"}))
    return nginx


class TestDomainsOverHttps:
    @pytest.mark.parametrize("host", SITE["domains"])
    def test_proxied_to_daedalus_with_forwarding_headers(
        self, serving: RunningNginx, host: str
    ) -> None:
        response = serving.https(host, "/posts/1?page=2")
        assert response.status == 200
        seen = json_body(response)
        assert seen["upstream"] == "daedalus"
        assert seen["path"] == "/posts/1?page=2"
        headers = seen["headers"]
        assert headers["host"] == host
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert "127.0.0.1" in headers["x-forwarded-for"]

    def test_certificate_is_verified_for_each_name(self, serving: RunningNginx) -> None:
        for host in [*SITE["domains"], *SITE["redirectDomains"]]:
            serving.https(host).read()  # raises if the certificate does not cover host
        with pytest.raises(ssl.SSLCertVerificationError):
            serving.https("not-on-the-cert.example")


class TestPlainHttp:
    @pytest.mark.parametrize("host", SITE["domains"])
    def test_serve_proxies_plain_http(self, serving: RunningNginx, host: str) -> None:
        response = serving.http(host, "/about")
        assert response.status == 200
        seen = json_body(response)
        assert seen["upstream"] == "daedalus"
        assert seen["headers"]["host"] == host
        assert seen["headers"]["x-forwarded-proto"] == "http"

    @pytest.mark.parametrize("host", SITE["domains"])
    def test_redirect_sends_plain_http_to_https(self, redirecting: RunningNginx, host: str) -> None:
        response = redirecting.http(host, "/about?x=1")
        assert response.status == 301
        assert response.getheader("Location") == f"https://{host}/about?x=1"

    def test_redirect_mode_still_serves_https(self, redirecting: RunningNginx) -> None:
        assert json_body(redirecting.https("lethain.com"))["upstream"] == "daedalus"


class TestRedirectDomains:
    @pytest.mark.parametrize("host", SITE["redirectDomains"])
    def test_both_ports_redirect_to_primary_keeping_path_and_query(
        self, serving: RunningNginx, host: str
    ) -> None:
        for response in (serving.http(host, "/a/b?c=d&e"), serving.https(host, "/a/b?c=d&e")):
            assert response.status == 301
            assert response.getheader("Location") == "https://lethain.com/a/b?c=d&e"

    def test_without_tls_redirects_to_plain_http(self, start_nginx: Any) -> None:
        nginx = start_nginx(site(tls=None), tls=False)
        response = nginx.http("willarson.com", "/x?y=1")
        assert response.status == 301
        assert response.getheader("Location") == "http://lethain.com/x?y=1"


class TestUnmatchedHosts:
    def test_go_to_daedalus_on_both_ports(self, serving: RunningNginx) -> None:
        assert json_body(serving.http("unknown.example", "/"))["upstream"] == "daedalus"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = SniConnection(
            "127.0.0.1", serving.facts.https_port, "unknown.example", context
        )
        connection.request("GET", "/", headers={"Host": "unknown.example"})
        assert json_body(connection.getresponse())["upstream"] == "daedalus"

    def test_http10_request_without_host_reaches_daedalus(self, serving: RunningNginx) -> None:
        with socket.create_connection(("127.0.0.1", serving.facts.http_port), timeout=5) as sock:
            sock.sendall(b"GET /old-client HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["upstream"] == "daedalus"


class TestAcmeChallenges:
    @pytest.mark.parametrize(
        "host", ["lethain.com", "www.lethain.com", "willarson.com", "unknown.example"]
    )
    @pytest.mark.parametrize("mode", ["serving", "redirecting"])
    def test_port_80_sends_every_host_to_cert_refresh(
        self, request: pytest.FixtureRequest, mode: str, host: str
    ) -> None:
        nginx: RunningNginx = request.getfixturevalue(mode)
        response = nginx.http(host, "/.well-known/acme-challenge/token-123")
        assert response.status == 200
        seen = json_body(response)
        assert seen["upstream"] == "cert-refresh"
        assert seen["path"] == "/.well-known/acme-challenge/token-123"
        assert seen["headers"]["host"] == host


class TestHealthEndpoint:
    def test_own_port(self, serving: RunningNginx) -> None:
        response = serving.http("anything", "/healthz", port=serving.facts.health_port)
        assert response.status == 200
        assert response.read() == b"ok\n"
        assert serving.http("anything", "/", port=serving.facts.health_port).status == 404

    def test_site_paths_are_not_intercepted(self, serving: RunningNginx) -> None:
        assert json_body(serving.http("lethain.com", "/healthz"))["upstream"] == "daedalus"


class TestHttp2:
    def test_https_offers_h2_by_alpn(self, serving: RunningNginx) -> None:
        context = ssl.create_default_context(cafile=str(serving.ca_file))
        context.set_alpn_protocols(["h2", "http/1.1"])
        address = ("127.0.0.1", serving.facts.https_port)
        with (
            socket.create_connection(address, timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="lethain.com") as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"

    @pytest.mark.parametrize("host", ["lethain.com", "willarson.com"])
    def test_a_real_http2_request_is_answered(self, serving: RunningNginx, host: str) -> None:
        """curl (nghttp2) speaks HTTP/2 for real: frames, HPACK, the answer."""
        answer = curl_http2(serving, host, "/posts/1")
        assert answer.startswith("2 "), answer
        assert answer.split()[1] in {"200", "301"}, answer

    def test_plain_http_still_speaks_http1(self, serving: RunningNginx) -> None:
        response = serving.http("lethain.com", "/")
        assert response.version == 11
        assert response.status == 200


def curl_http2(nginx: RunningNginx, host: str, path: str) -> str:
    """`curl --http2` to the site: "<HTTP version> <status>"."""
    port = nginx.facts.https_port
    result = subprocess.run(
        [
            "curl", "-sS", "--http2", "--cacert", str(nginx.ca_file),
            "--resolve", f"{host}:{port}:127.0.0.1",
            "-o", "/dev/null", "-w", "%{http_version} %{response_code}",
            f"https://{host}:{port}{path}",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.stdout or result.stderr


class TestCompression:
    def test_text_answers_are_gzipped_when_the_client_accepts_it(
        self, serving: RunningNginx
    ) -> None:
        # The echo's JSON carries the path: long enough to pass gzip_min_length.
        path = "/" + "long-path-segment/" * 80
        plain = json_body(serving.https("lethain.com", path))
        response = https_with(serving, "lethain.com", path, {"Accept-Encoding": "gzip"})
        assert response.getheader("Content-Encoding") == "gzip"
        assert "Accept-Encoding" in (response.getheader("Vary") or "")
        body = gzip.decompress(response.read())
        assert json.loads(body)["path"] == plain["path"]

    def test_not_without_accept_encoding_nor_below_a_kilobyte(self, serving: RunningNginx) -> None:
        response = serving.https("lethain.com", "/" + "x" * 2000)
        assert response.getheader("Content-Encoding") is None
        response.read()
        small = https_with(serving, "lethain.com", "/", {"Accept-Encoding": "gzip"})
        assert small.getheader("Content-Encoding") is None


def https_with(nginx: RunningNginx, host: str, path: str, headers: dict[str, str]) -> Any:
    context = ssl.create_default_context(cafile=str(nginx.ca_file))
    connection = SniConnection("127.0.0.1", nginx.facts.https_port, host, context)
    connection.request("GET", path, headers={"Host": host, **headers})
    return connection.getresponse()


class TestHsts:
    def test_off_unless_the_spec_asks(self, serving: RunningNginx) -> None:
        assert serving.https("lethain.com").getheader("Strict-Transport-Security") is None

    def test_on_https_for_the_sites_names_only(self, start_nginx: Any) -> None:
        nginx = start_nginx(site(frontend={"hsts": {"maxAgeSeconds": 600}}))
        for host in ("lethain.com", "willarson.com"):
            response = nginx.https(host)
            assert response.getheader("Strict-Transport-Security") == "max-age=600", host
            response.read()
        # Never over plain HTTP (RFC 6797 §7.2), nor for names not on the site.
        assert nginx.http("lethain.com").getheader("Strict-Transport-Security") is None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        other = SniConnection("127.0.0.1", nginx.facts.https_port, "unknown.example", context)
        other.request("GET", "/", headers={"Host": "unknown.example"})
        assert other.getresponse().getheader("Strict-Transport-Security") is None

    def test_include_sub_domains(self, start_nginx: Any) -> None:
        nginx = start_nginx(site(frontend={"hsts": {"includeSubDomains": True}}))
        assert (
            nginx.https("lethain.com").getheader("Strict-Transport-Security")
            == "max-age=31536000; includeSubDomains"
        )


def test_plain_http_only_site_has_no_tls_listener(start_nginx: Any) -> None:
    nginx = start_nginx(site(tls=None), tls=False)
    assert "ssl" not in nginx.conf
    assert json_body(nginx.http("lethain.com"))["upstream"] == "daedalus"
    with pytest.raises(ConnectionRefusedError):
        nginx.https("lethain.com")
