"""Real nginx running the rendered nginx.conf, with stub upstreams on loopback.

The renderer takes upstream addresses as facts (`NginxFacts`): in the cluster
they are the Services of the site, here they are two small HTTP servers, so
the very configuration the operator ships is what the tests exercise. Used by
tests/nginx and by the end-to-end ACME test.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPResponse, HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from blogsite_operator import certs, models
from blogsite_operator.render.nginx import NginxFacts, render_nginx_conf
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


NGINX_ENV = "BLOGSITE_OPERATOR_NGINX"


@functools.cache
def nginx_binary() -> str:
    """The frontend image's nginx, run here (hack/images.sh nginx): the tests
    hold the renderer and the checker to the nginx that serves, never to
    whatever nginx this machine has. hack/test.sh finds it once and exports
    it; the operators the tests start inherit it as their checker."""
    binary = os.environ.get(NGINX_ENV)
    if not binary:
        found = subprocess.run(
            [str(ROOT / "hack" / "images.sh"), "nginx"], capture_output=True, text=True, check=False
        )
        if found.returncode != 0 or not found.stdout.startswith("NGINX="):
            pytest.fail(f"hack/images.sh nginx failed: {found.stderr[-2000:]}")
        binary = found.stdout.strip().removeprefix("NGINX=")
        os.environ[NGINX_ENV] = binary
    if not Path(binary).is_file():
        pytest.fail(f"{NGINX_ENV}={binary} is no file")
    return binary


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with what it received, so tests can see what nginx forwarded."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm
    # and delayed ACKs hold each kept-alive answer 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "upstream": self.server.name,  # type: ignore[attr-defined]
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class Stub:
    name: str
    server: ThreadingHTTPServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def start_stub(name: str, port: int = 0) -> Stub:
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Stub(name, server)


@dataclass
class RunningNginx:
    spec: models.BlogSiteSpec
    facts: NginxFacts
    ca_file: Path
    conf: str

    def http(self, host: str, path: str = "/", port: int | None = None) -> HTTPResponse:
        connection = HTTPConnection("127.0.0.1", port or self.facts.http_port, timeout=5)
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse()

    def https(self, host: str, path: str = "/", trust: Path | None = None) -> HTTPResponse:
        """A TLS request with SNI `host`, trusting only `trust` (default: the site's cert)."""
        context = ssl.create_default_context(cafile=str(trust or self.ca_file))
        connection = SniConnection("127.0.0.1", self.facts.https_port, host, context)
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse()


class SniConnection(HTTPSConnection):
    """HTTPS to a loopback address with the TLS server name of a site."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext) -> None:
        super().__init__(address, port, timeout=5, context=context)
        self.server_name = server_name
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.server_name)


def json_body(response: HTTPResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.read())
    return data


def check_config(conf: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a configuration file, as the operator will run it."""
    path = workdir / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    return subprocess.run(
        [nginx_binary(), "-t", "-q", "-e", "stderr", "-p", str(workdir), "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def launch_nginx(
    raw_spec: dict[str, Any],
    workdir: Path,
    upstreams: tuple[str, str],
    *,
    tls: bool = True,
    certificate: tuple[bytes, bytes] | None = None,
    canary: str | None = None,
    traffic_log: str | None = None,
) -> tuple[RunningNginx, subprocess.Popen[bytes]]:
    """nginx running the rendered configuration of `raw_spec`, answering /healthz.

    `upstreams`: the addresses of daedalus and cert-refresh (host:port);
    `canary` and `traffic_log` those of the canary and the traffic collector.

    `certificate` (chain PEM, key PEM) is served over TLS; by default a
    self-signed placeholder for the site's names, which `https()` trusts.
    """
    spec = models.parse_spec(raw_spec)
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert_pem, key_pem = certificate or certs.self_signed_placeholder(
        [*spec.domains, *spec.redirect_domains]
    )
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    facts = NginxFacts(
        daedalus_upstream=upstreams[0],
        challenge_upstream=upstreams[1],
        canary_upstream=canary,
        traffic_log=traffic_log,
        tls_certificate=str(cert) if tls else None,
        tls_certificate_key=str(key) if tls else None,
        temp_dir=str(workdir),
        pid_file=str(workdir / "nginx.pid"),
        http_port=free_port(),
        https_port=free_port(),
        health_port=free_port(),
    )
    conf = render_nginx_conf(spec, facts)
    checked = check_config(conf, workdir)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [
            nginx_binary(),
            "-e",
            "stderr",
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
    )
    running = RunningNginx(spec, facts, cert, conf)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}")
        try:
            return running.http("any", "/healthz", port=facts.health_port).status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=15, interval=0.1, what="nginx to answer /healthz")
    return running, process
