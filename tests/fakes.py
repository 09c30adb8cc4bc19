"""A hand-driven clock for scheduler tests: time moves only when the test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools

WALL_OFFSET = 1_764_000_000.0  # fake monotonic 0 is this unix time (2025-11-24)


class FakeClock:
    """Implements the scheduler's Clock; `advance()` wakes sleepers in time order."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + WALL_OFFSET

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, letting every task woken on the way run."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.cancelled():
                future.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run until they block again (on the fake clock or elsewhere)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
