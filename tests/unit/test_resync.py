"""The periodic resync: every site once per interval, spread over it."""

from __future__ import annotations

import asyncio
import contextlib

from blogsite_operator.handlers import SiteQueue, resync_offset
from blogsite_operator.settings import OperatorSettings


def test_offsets_are_stable_and_spread_over_the_interval() -> None:
    keys = [("ns", f"site-{i}") for i in range(1000)]
    offsets = [resync_offset(key, 600.0) for key in keys]
    assert offsets == [resync_offset(key, 600.0) for key in keys]
    assert all(0 <= offset < 600 for offset in offsets)
    for tenth in range(10):
        share = sum(60 * tenth <= offset < 60 * (tenth + 1) for offset in offsets)
        assert 50 <= share <= 150, (tenth, share)


def test_every_known_site_is_triggered_once_a_cycle_in_offset_order() -> None:
    queue = SiteQueue(OperatorSettings())
    queue.known.update({("ns", "a"), ("ns", "b"), ("ns", "c")})
    triggered: list[tuple[str, str]] = []
    queue._spawn_trigger = lambda namespace, name: triggered.append((namespace, name))  # type: ignore[method-assign]

    async def two_cycles() -> None:
        task = asyncio.ensure_future(queue.resync_forever(interval=0.2))

        async def six_triggers() -> None:
            while len(triggered) < 6:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(six_triggers(), timeout=10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(two_cycles())
    by_offset = sorted(queue.known, key=lambda key: resync_offset(key, 0.2))
    assert triggered == by_offset * 2
