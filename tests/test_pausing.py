"""Work in steps on the event loop, and the background work that stands aside for a scrape."""

from __future__ import annotations

import asyncio

from sla_exporter import pausing


def counting(steps: int, done: list[int]) -> pausing.Steps[int]:
    for i in range(steps):
        done.append(i)
        yield
    return steps


async def spin(times: int = 50) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_work_stands_aside_while_a_scrape_runs_and_goes_on_after_it() -> None:
    aside, done = pausing.Aside(patience=60), []
    with aside.running():
        task = asyncio.create_task(pausing.run(counting(5, done), aside))
        await spin()
        assert done == [0]  # one step, then it waits for the scrape to end
    assert await task == 5
    assert done == [0, 1, 2, 3, 4]


async def test_work_without_aside_or_with_nothing_running_does_not_wait() -> None:
    aside, done = pausing.Aside(patience=60), []
    assert await pausing.run(counting(3, done), aside) == 3
    with pausing.Aside().running():  # another one's scrape
        assert await pausing.run(counting(3, done)) == 3


async def test_work_stands_aside_no_longer_than_its_patience() -> None:
    """A client scraping without end cannot keep the ledger from being written."""
    aside, done = pausing.Aside(patience=0.2), []
    loop = asyncio.get_running_loop()
    with aside.running():
        started = loop.time()
        assert await pausing.run(counting(20, done), aside) == 20
        waited = loop.time() - started
    assert 0.2 <= waited < 1.0  # the patience once in all, not once per step


async def test_two_scrapes_at_once_the_work_waits_for_both() -> None:
    aside, done = pausing.Aside(patience=60), []
    first, second = aside.running(), aside.running()
    first.__enter__()
    second.__enter__()
    task = asyncio.create_task(pausing.run(counting(3, done), aside))
    await spin()
    first.__exit__(None, None, None)
    await spin()
    assert done == [0]
    second.__exit__(None, None, None)
    assert await task == 3
