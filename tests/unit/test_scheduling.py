"""Pass slots: a bounded number of passes at once, changed specs first."""

from __future__ import annotations

import asyncio

import pytest

from blogsite_operator.handlers import SiteQueue, spec_not_yet_reconciled
from blogsite_operator.scheduling import PassSlots
from blogsite_operator.settings import OperatorSettings


def test_no_more_passes_run_at_once_than_there_are_slots() -> None:
    slots = PassSlots(3)
    running = 0
    most = 0

    async def a_pass(index: int) -> None:
        nonlocal running, most
        async with slots.slot(("ns", f"site-{index}")):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(a_pass(i) for i in range(20)))

    asyncio.run(main())
    assert most == 3
    assert slots.free == 3


def test_urgent_passes_go_before_the_others_and_each_class_keeps_its_order() -> None:
    slots = PassSlots(1)
    order: list[str] = []

    async def a_pass(name: str) -> None:
        async with slots.slot(("ns", name)):
            order.append(name)

    async def main() -> None:
        async with slots.slot(("ns", "busy")):
            tasks = []
            for name in ("a", "b", "c", "d"):
                if name == "c":
                    slots.mark_urgent(("ns", "c"))  # before it waits
                tasks.append(asyncio.ensure_future(a_pass(name)))
                await asyncio.sleep(0)
            slots.mark_urgent(("ns", "d"))  # while it waits
            assert slots.waiting() == 4
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == ["c", "d", "a", "b"]
    assert not slots.is_urgent(("ns", "c"))  # used up by the pass it started
    assert slots.free == 1


def test_a_cancelled_waiter_gives_up_its_place_and_no_slot() -> None:
    slots = PassSlots(1)
    ran: list[str] = []

    async def a_pass(name: str) -> None:
        async with slots.slot(("ns", name)):
            ran.append(name)

    async def main() -> None:
        async with slots.slot(("ns", "busy")):
            doomed = asyncio.ensure_future(a_pass("doomed"))
            kept = asyncio.ensure_future(a_pass("kept"))
            await asyncio.sleep(0)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert slots.waiting() == 1
        await kept

    asyncio.run(main())
    assert ran == ["kept"]
    assert slots.free == 1


def test_a_new_or_changed_spec_is_not_yet_reconciled_and_a_status_refresh_is() -> None:
    assert spec_not_yet_reconciled({"metadata": {"generation": 1}})
    assert spec_not_yet_reconciled(
        {"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}
    )
    assert not spec_not_yet_reconciled(
        {"metadata": {"generation": 3}, "status": {"observedGeneration": 3}}
    )


def test_the_queue_runs_a_changed_site_before_refreshes_queued_earlier() -> None:
    queue = SiteQueue(OperatorSettings(workers=1))
    order: list[str] = []
    release = asyncio.Event()

    async def a_pass(key: tuple[str, str]) -> str:
        if key[1] == "first":
            await release.wait()
        order.append(key[1])
        return "success"

    queue._pass = a_pass  # type: ignore[method-assign]

    async def main() -> None:
        queue.enqueue("ns", "first")
        await asyncio.sleep(0)
        queue.enqueue("ns", "refresh-1")
        queue.enqueue("ns", "refresh-2")
        queue.enqueue("ns", "changed", urgent=True)
        await asyncio.sleep(0)
        release.set()
        while len(order) < 4:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert order == ["first", "changed", "refresh-1", "refresh-2"]
