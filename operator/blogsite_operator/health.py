"""The operator's health endpoints, served from a thread of their own so that
they answer while the process waits to lead, and tell a stuck event loop
from a live one.

  /healthz  200 while the process works: a candidate waiting for the Lease,
            or a leader whose event loop has beaten recently and none of
            whose watches has been dead, or failing without a break, for
            longer than a bound (kopf retries a failing watch for ever and
            does not respawn one that died: a restart is the cure), and
            no pass has run for longer than a bound (a reconcile thread stuck)
  /readyz   200 while the process is a candidate, or a leader whose watches
            have all listed once (before that its passes are held back)
  /metrics  Prometheus metrics (unless turned off)
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from blogsite_operator.metrics import CONTENT_TYPE, Metrics

logger = logging.getLogger("blogsite_operator.health")

# A leader's event loop beats every second; this long without a beat and it
# is stuck (a blocking call in a coroutine, a deadlock): let the kubelet
# restart the process.
STUCK_AFTER_SECONDS = 30.0
# A pass takes well under a second, its API requests at most 30 s each
# (kube.py); one running this long has a reconcile thread stuck, and with
# every thread stuck nothing is reconciled while the event loop still beats.
PASS_STUCK_AFTER_SECONDS = 600.0


# kopf names each watch-stream task so (orchestration.py).
WATCHER_TASK_PREFIX = "watcher for "
# kopf retries a failing watch request for ever (403s included: they happen
# during upgrades) and logs each failure; failures further apart than this
# are separate streaks (our backoffs are at most 10 s).
FAILURE_STREAK_GAP_SECONDS = 30.0
_FAILED_REQUEST = re.compile(r"Request attempt #\d+ failed; .*?GET ([^?\s]+)")
# At DEBUG, from the logger below: a watch whose resourceVersion expired,
# about to list again.
_EXPIRED_WATCH = re.compile(
    r"Restarting the watch-stream for ([a-z0-9-]+)\S* (?:in '([^']+)'|cluster-wide)"
)
WATCHING_LOGGER = "kopf._cogs.clients.watching"


class WatchFailures(logging.Handler):
    """Reads kopf's log for watch requests that keep failing (a lost
    permission, a gone resource: the watch is as good as dead), and counts
    the restarts of every watch for the metrics (kopf keeps no count)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.metrics = metrics
        # Told of each expired watch (resource plural, namespace or None),
        # before its new list begins: the cache stops trusting what it had.
        self.on_expired: Callable[[str, str | None], None] = lambda plural, namespace: None
        self._streaks: dict[str, tuple[float, float]] = {}  # URL path -> (first, last)
        self._lock_streaks = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        expired = _EXPIRED_WATCH.search(message)
        if expired is not None:
            self._count(expired.group(1), "expired")
            self.on_expired(expired.group(1), expired.group(2))
            return
        match = _FAILED_REQUEST.search(message) if record.levelno >= logging.ERROR else None
        if match is None:
            return
        # A list or a watch request: either way the stream of that path is down.
        path, now = urlsplit(match.group(1)).path, time.monotonic()
        self._count(path.rsplit("/", 1)[-1], "failed")
        with self._lock_streaks:
            first, last = self._streaks.get(path, (now, now))
            if now - last > FAILURE_STREAK_GAP_SECONDS:
                first = now
            self._streaks[path] = (first, now)

    def _count(self, resource: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.watch_restarts.labels(resource, reason).inc()

    def failing(self, longer_than: float) -> list[tuple[str, float]]:
        """Watches failing without a break for longer than `longer_than` seconds."""
        now = time.monotonic()
        with self._lock_streaks:
            return sorted(
                (path, now - first)
                for path, (first, last) in self._streaks.items()
                if now - last <= FAILURE_STREAK_GAP_SECONDS and now - first > longer_than
            )


class Health:
    def __init__(self, watch_dead_after: float = 60.0, metrics: Metrics | None = None) -> None:
        self.role = "starting"  # starting | candidate | leader | stopping
        self.synced: threading.Event | None = None  # a leader's watches have listed
        # The site whose pass has run longest, and for how long (SiteQueue).
        self.longest_pass: Callable[[], tuple[tuple[str, str], float] | None] = lambda: None
        self.watch_dead_after = watch_dead_after
        self.watch_failures = WatchFailures(metrics)
        self._beat_at: float | None = None
        self._beating: asyncio.Future[None] | None = None
        self._watchers: dict[str, asyncio.Task[object]] = {}
        self._dead: list[str] = []
        self._dead_since: float | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        """From the event loop: it is free, and which watches are dead."""
        for task in asyncio.all_tasks():
            if task.get_name().startswith(WATCHER_TASK_PREFIX):
                self._watchers[task.get_name()] = task
        dead = sorted(
            name.removeprefix(WATCHER_TASK_PREFIX)
            for name, task in self._watchers.items()
            if task.done() and not task.cancelled()
        )
        now = time.monotonic()
        with self._lock:
            self._beat_at = now
            if dead and self._dead_since is None:
                logger.error("watches died and are not restarted: %s", ", ".join(dead))
                self._dead_since = now
            elif not dead:
                self._dead_since = None
            self._dead = dead

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
            dead, dead_since = list(self._dead), self._dead_since
        if role == "leader":
            if beat_at is None:
                return True, "leader, starting"
            now = time.monotonic()
            silent = now - beat_at
            if silent > STUCK_AFTER_SECONDS:
                return False, f"leader, event loop silent for {silent:.0f}s"
            if dead_since is not None and now - dead_since > self.watch_dead_after:
                return False, f"leader, watches dead for {now - dead_since:.0f}s: {', '.join(dead)}"
            longest = self.longest_pass()
            if longest is not None and longest[1] > PASS_STUCK_AFTER_SECONDS:
                (namespace, name), seconds = longest
                return False, f"leader, the pass over {namespace}/{name} stuck for {seconds:.0f}s"
            failing = self.watch_failures.failing(longer_than=self.watch_dead_after)
            if failing:
                worst = max(seconds for _, seconds in failing)
                paths = ", ".join(path for path, _ in failing)
                return False, f"leader, watches failing for {worst:.0f}s: {paths}"
        return True, role

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            role = self.role
        if role == "leader" and self.synced is not None and not self.synced.is_set():
            return False, "leader, waiting for every watch to list once"
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
