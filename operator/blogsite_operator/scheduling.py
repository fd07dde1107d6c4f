"""Which waiting pass runs next, when every reconcile worker is busy.

A spec the user just applied goes before a pass that only brings status up
to date: on an operator busy with a thousand sites' pod and Deployment
status events, `kubectl apply` of a new or changed BlogSite is acted on as
soon as a worker is free, not after every queued refresh. controller-runtime's
priority queue makes the same choice (items from a resync or an initial list
go last). Within each class passes run in the order they asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

Key = tuple[str, str]


class PassSlots:
    """At most `size` passes at once; urgent ones first, then the others."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one pass must be able to run")
        self.free = size
        self._urgent: deque[tuple[Key, asyncio.Future[None]]] = deque()
        self._other: deque[tuple[Key, asyncio.Future[None]]] = deque()
        self._urgent_keys: set[Key] = set()

    def mark_urgent(self, key: Key) -> None:
        """The site's spec changed: its next pass goes first, also if it is
        already waiting."""
        self._urgent_keys.add(key)
        for index, (waiting, future) in enumerate(self._other):
            if waiting == key:
                del self._other[index]
                self._urgent.append((key, future))
                return

    def forget(self, key: Key) -> None:
        self._urgent_keys.discard(key)

    def is_urgent(self, key: Key) -> bool:
        return key in self._urgent_keys

    def waiting(self) -> int:
        return len(self._urgent) + len(self._other)

    @contextlib.asynccontextmanager
    async def slot(self, key: Key) -> AsyncIterator[None]:
        """Hold one of the slots for the pass over `key`. The pass reads the
        spec as it is now, so an urgent mark is used up when it starts."""
        if self.free > 0 and not self.waiting():
            self.free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (key, future)
            (self._urgent if key in self._urgent_keys else self._other).append(entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # handed this slot just as it was cancelled
                else:
                    for queue in (self._urgent, self._other):
                        with contextlib.suppress(ValueError):
                            queue.remove(entry)
                raise
        self._urgent_keys.discard(key)
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        """Hand the slot to the first waiter, urgent ones before the rest."""
        for queue in (self._urgent, self._other):
            while queue:
                _key, future = queue.popleft()
                if not future.done():
                    future.set_result(None)
                    return
        self.free += 1
