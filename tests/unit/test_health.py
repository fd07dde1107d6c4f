"""Health: liveness fails on dead or failing watches; readiness waits for the first lists."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from blogsite_operator import health as health_module
from blogsite_operator.handlers import SiteQueue
from blogsite_operator.health import PASS_STUCK_AFTER_SECONDS, Health, WatchFailures
from blogsite_operator.metrics import Metrics
from blogsite_operator.settings import OperatorSettings


def test_a_dead_watch_fails_liveness_after_the_bound_and_a_live_one_does_not() -> None:
    async def scenario() -> list[tuple[bool, str]]:
        health = Health(watch_dead_after=0.2)
        health.role = "leader"

        async def watching() -> None:
            await asyncio.Event().wait()

        denied = asyncio.Event()

        async def forbidden() -> None:
            await denied.wait()
            raise RuntimeError("403 Forbidden")

        alive = asyncio.create_task(watching(), name="watcher for pods@blogs")
        dying = asyncio.create_task(forbidden(), name="watcher for secrets@blogs")
        await asyncio.sleep(0)
        health.beat()  # both seen running (the loop beats every second)
        denied.set()
        await asyncio.sleep(0.01)  # the second one has died
        health.beat()
        answers = [health.alive()]
        await asyncio.sleep(0.3)
        health.beat()
        answers.append(health.alive())
        alive.cancel()
        await asyncio.gather(alive, dying, return_exceptions=True)
        return answers

    first, later = asyncio.run(scenario())
    assert first == (True, "leader")  # dead, but not for long yet
    assert later[0] is False
    assert "watches dead for" in later[1]
    assert "secrets@blogs" in later[1]
    assert "pods@blogs" not in later[1]


def test_watches_cancelled_at_shutdown_are_not_dead_and_candidates_are_alive() -> None:
    async def scenario() -> tuple[bool, str]:
        health = Health(watch_dead_after=0.0)
        health.role = "leader"
        task = asyncio.create_task(asyncio.Event().wait(), name="watcher for pods@blogs")
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        health.beat()
        return health.alive()

    assert asyncio.run(scenario()) == (True, "leader")
    candidate = Health()
    candidate.role = "candidate"
    assert candidate.alive() == (True, "candidate")


def test_a_watch_kopf_keeps_retrying_fails_liveness_once_its_streak_is_long() -> None:
    health = Health(watch_dead_after=0.0)
    health.role = "leader"

    async def beat() -> None:
        health.beat()

    asyncio.run(beat())
    failed = logging.LogRecord(
        "kopf.objects",
        logging.ERROR,
        __file__,
        1,
        "Request attempt #3 failed; will retry: GET https://127.0.0.1:6443/api/v1/namespaces/"
        "blogs/pods?watch=true&timeoutSeconds=300 -> APIForbiddenError('forbidden')",
        None,
        None,
    )
    listing = logging.LogRecord(
        "kopf.objects",
        logging.ERROR,
        __file__,
        1,
        "Request attempt #2 failed; will retry: GET https://127.0.0.1:6443/api/v1/namespaces/"
        "blogs/secrets?labelSelector=x -> APIServerError('500')",
        None,
        None,
    )
    assert health.alive() == (True, "leader")
    health.watch_failures.emit(failed)
    health.watch_failures.emit(listing)  # a list that fails: its watch never starts
    time.sleep(0.01)
    ok, detail = health.alive()
    assert not ok
    assert "watches failing for" in detail
    assert "/api/v1/namespaces/blogs/pods, /api/v1/namespaces/blogs/secrets" in detail


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf", level, __file__, 1, message, None, None)


def test_watch_restarts_are_counted_by_resource_and_reason() -> None:
    metrics = Metrics()
    failures = WatchFailures(metrics)
    for message in (
        "Restarting the watch-stream for pods.v1 in 'blogs'.",
        "Restarting the watch-stream for deployments.v1.apps cluster-wide.",
        "Restarting the watch-stream for pods.v1 in 'other'.",
    ):
        failures.emit(record(logging.DEBUG, message))
    failures.emit(
        record(
            logging.ERROR,
            "Request attempt #2 failed; will retry: GET https://127.0.0.1:6443/apis/apps/v1/"
            "namespaces/blogs/deployments?watch=true -> APIServerError('500')",
        )
    )
    # The same words at DEBUG are kopf's note before a retry, not a failure.
    failures.emit(record(logging.DEBUG, "Request attempt #3 failed; GET https://h/api/v1/pods"))

    def count(resource: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "blogsite_watch_restarts_total", {"resource": resource, "reason": reason}
        )

    assert count("pods", "expired") == 2
    assert count("deployments", "expired") == 1
    assert count("deployments", "failed") == 1
    assert count("pods", "failed") is None


def test_a_leader_is_ready_only_once_its_watches_have_listed() -> None:
    health = Health()
    health.role = "candidate"
    assert health.ready() == (True, "candidate")
    health.synced = threading.Event()
    health.role = "leader"
    assert health.ready() == (False, "leader, waiting for every watch to list once")
    health.synced.set()
    assert health.ready() == (True, "leader")
    health.role = "stopping"
    assert health.ready() == (False, "stopping")


def test_a_pass_running_past_the_bound_fails_liveness() -> None:
    health = Health()
    health.role = "leader"

    async def beat() -> None:
        health.beat()

    asyncio.run(beat())
    health.longest_pass = lambda: (("blogs", "lethain"), 30.0)
    assert health.alive() == (True, "leader")
    health.longest_pass = lambda: (("blogs", "lethain"), PASS_STUCK_AFTER_SECONDS + 1)
    ok, detail = health.alive()
    assert not ok
    assert "the pass over blogs/lethain stuck for" in detail


def test_the_queue_names_the_pass_running_longest_while_it_runs() -> None:
    queue = SiteQueue(OperatorSettings())
    assert queue.longest_pass() is None
    seen: list[tuple[tuple[str, str], float] | None] = []

    async def a_pass(key: tuple[str, str]) -> str:
        seen.append(queue.longest_pass())
        return "success"

    queue._pass = a_pass  # type: ignore[method-assign]
    asyncio.run(queue.trigger("blogs", "lethain"))
    (longest,) = seen
    assert longest is not None
    key, seconds = longest
    assert key == ("blogs", "lethain")
    assert 0 <= seconds < 5
    assert queue.longest_pass() is None


def test_healthz_fails_while_the_event_loop_is_stuck_and_recovers_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's 30 s, scaled to 1 s: a real event loop, blocked by a
    blocking call in a coroutine, and /healthz asked over HTTP meanwhile."""
    assert health_module.STUCK_AFTER_SECONDS == 30.0  # what the README says
    monkeypatch.setattr(health_module, "STUCK_AFTER_SECONDS", 1.0)
    health = Health()
    health.role = "leader"
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = health.serve("127.0.0.1:0")
    port = server.server_address[1]

    def healthz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    unblock = threading.Event()
    try:
        loop.call_soon_threadsafe(health.start_beating)
        deadline = time.monotonic() + 10
        while healthz() != (200, "ok: leader\n") or health._beat_at is None:
            assert time.monotonic() < deadline, healthz()
            time.sleep(0.05)
        loop.call_soon_threadsafe(unblock.wait, 30)  # a blocking call on the loop
        deadline = time.monotonic() + 10
        while (status := healthz())[0] == 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status[0] == 503, status
        assert "event loop silent" in status[1], status
        unblock.set()
        deadline = time.monotonic() + 10
        while healthz()[0] != 200:
            assert time.monotonic() < deadline, healthz()
            time.sleep(0.05)
    finally:
        unblock.set()
        server.shutdown()
        server.server_close()
        loop.call_soon_threadsafe(loop.stop)
