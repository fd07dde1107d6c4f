"""The cert-refresh process: answers ACME HTTP-01 challenges.

For now it serves only its health endpoint and 404s every token; the ACME
work publishes tokens for it to serve (see the certificates issue).
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger("blogsite_operator.challenge_server")

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class ChallengeHandler(BaseHTTPRequestHandler):
    server_version = "blogsite-challenge-server"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, b"ok\n")
        elif self.path.startswith(CHALLENGE_PREFIX):
            self._reply(404, b"no such challenge token\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)


def serve(address: str, port: int) -> None:
    server = ThreadingHTTPServer((address, port), ChallengeHandler)
    logger.info("challenge server listening on %s:%d", address, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
