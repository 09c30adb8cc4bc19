"""Long work on the event loop in steps: a generator yields where it may pause, and the loop
runs probes due meanwhile before the next step (rendering /metrics, writing the ledger)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Work that yields (nothing) where it may pause and returns its result at the end.
Steps = Generator[None, None, R]


async def run(work: Steps[R], aside: Aside | None = None) -> R:
    """Run `work` to its end, giving the event loop back at each of its pauses; with `aside`,
    standing aside there while what it guards runs (`Aside.wait`)."""
    deadline = asyncio.get_running_loop().time() + aside.patience if aside else 0.0
    try:
        while True:
            next(work)
            await asyncio.sleep(0)
            if aside is not None:
                await aside.wait(deadline)
    except StopIteration as done:
        result: R = done.value
        return result


class Aside:
    """Background work that stands aside for a scrape: the ledger's flush (the month
    bookkeeping and the file's JSON, ~0.2 s at 10,000 services) and a scrape's rendering
    both run in steps on the one event loop; run at once, each waits for the other's steps and
    the scrape takes that much longer. The flush waits at its pauses while a scrape renders,
    for at most `patience` seconds in all, so that a client scraping without end cannot keep
    the months from being written."""

    def __init__(self, patience: float = 5.0) -> None:
        self.patience = patience
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the work that others stand aside for (rendering /metrics)."""
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def wait(self, deadline: float) -> None:
        """Until nothing runs, or the loop's clock reaches `deadline`."""
        if self._running:
            timeout = deadline - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))


def finish(work: Steps[R]) -> R:
    """Run `work` to its end without pausing (outside the event loop, or in tests)."""
    try:
        while True:
            next(work)
    except StopIteration as done:
        result: R = done.value
        return result


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter): pause between two of them."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
