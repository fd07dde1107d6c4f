"""Health: liveness fails on dead or failing watches; readiness waits for the first lists."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from blogsite_operator.health import Health


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
    health.watch_failures.emit(listing)  # not a watch: not counted
    assert health.alive() == (True, "leader")
    health.watch_failures.emit(failed)
    time.sleep(0.01)
    ok, detail = health.alive()
    assert not ok
    assert "watches failing for" in detail
    assert "/api/v1/namespaces/blogs/pods" in detail
    assert "secrets" not in detail


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
