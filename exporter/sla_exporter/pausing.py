"""Long work on the event loop in steps: a generator yields where it may pause, and the loop
runs probes due meanwhile before the next step (rendering /metrics, writing the ledger)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Work that yields (nothing) where it may pause and returns its result at the end.
Steps = Generator[None, None, R]


async def run(work: Steps[R]) -> R:
    """Run `work` to its end, giving the event loop back at each of its pauses."""
    try:
        while True:
            next(work)
            await asyncio.sleep(0)
    except StopIteration as done:
        result: R = done.value
        return result


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
