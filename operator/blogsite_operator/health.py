"""The operator's health endpoints, served from a thread of their own so that
they answer while the process waits to lead, and tell a stuck event loop
from a live one.

  /healthz  200 while the process works: a candidate waiting for the Lease,
            or a leader whose event loop has beaten recently
  /readyz   200 once the process is a candidate or a running leader
  /metrics  Prometheus metrics (unless turned off)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from blogsite_operator.metrics import CONTENT_TYPE, Metrics

logger = logging.getLogger("blogsite_operator.health")

# A leader's event loop beats every second; this long without a beat and it
# is stuck (a blocking call in a coroutine, a deadlock): let the kubelet
# restart the process.
STUCK_AFTER_SECONDS = 30.0


class Health:
    def __init__(self) -> None:
        self.role = "starting"  # starting | candidate | leader | stopping
        self._beat_at: float | None = None
        self._beating: asyncio.Future[None] | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._beat_at = time.monotonic()

    def start_beating(self) -> None:
        """From the event loop: beat every second while the loop is free."""
        self._beating = asyncio.ensure_future(self._beat_forever())

    async def _beat_forever(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(1.0)

    def alive(self) -> tuple[bool, str]:
        with self._lock:
            role, beat_at = self.role, self._beat_at
        if role == "leader":
            if beat_at is None:
                return True, "leader, starting"
            silent = time.monotonic() - beat_at
            if silent > STUCK_AFTER_SECONDS:
                return False, f"leader, event loop silent for {silent:.0f}s"
        return True, role

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            role = self.role
        return role in ("candidate", "leader"), role

    def serve(self, address: str, metrics: Metrics | None = None) -> ThreadingHTTPServer:
        """Serve on HOST:PORT from a daemon thread (and /metrics, if given)."""
        host, _, port = address.rpartition(":")
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics" and metrics is not None:
                    self._answer(200, metrics.expose(), CONTENT_TYPE)
                    return
                checks = {"/healthz": health.alive, "/readyz": health.ready}
                check = checks.get(path)
                if check is None:
                    self.send_error(404)
                    return
                ok, detail = check()
                body = f"{'ok' if ok else 'failing'}: {detail}\n".encode()
                self._answer(200 if ok else 503, body, "text/plain; charset=utf-8")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # a probe every few seconds is not news

        server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        logger.info("health endpoints on %s: /healthz /readyz", address)
        return server
