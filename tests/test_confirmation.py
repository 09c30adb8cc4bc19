"""How fast a page comes and goes, measured end to end with real processes.

The demo's API is probed every 5 s and re-probed every half second while it fails
(`confirm: 500ms`, examples/demo.yml); Prometheus scrapes and evaluates every second,
Alertmanager groups within a second. Outages start at random moments of a slot. Figures are
printed as multiples of the probe interval, the unit the goal is set in: a page within 1.5
intervals of the outage's start at the median, the resolve within 1 interval of recovery, and
no page for a blip that fails a single probe.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.slow

INTERVAL = 5.0  # the demo API's interval, as examples/demo.yml has it


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("confirm")
    with running_stack(workdir, interval="5s") as stack:
        wait_for(
            lambda: len(stack.query('sla_probe_success{sla_service="api"} == 1')) == 1,
            "the API up in Prometheus",
        )
        yield stack


def count(stack: Stack, status: str) -> int:
    return sum(
        1
        for n in stack.notifications()
        if n["route"] == "page"
        and n["status"] == status
        and n["labels"].get("alertname") == "SLAServiceDown"
        and n["labels"].get("sla_service") == "api"
    )


def test_a_blip_that_fails_one_probe_pages_nobody(stack: Stack) -> None:
    before = count(stack, "firing")
    rng = random.Random(1)
    for _ in range(4):
        time.sleep(rng.uniform(0, INTERVAL))
        stack.set_service("api", up=False)
        time.sleep(0.4)  # fails the probe that falls in it, if one does; the re-probe passes
        stack.set_service("api", up=True)
    time.sleep(INTERVAL)
    assert count(stack, "firing") == before


def test_pages_come_within_one_and_a_half_intervals_and_resolve_within_one(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(7)
    paged, resolved = [], []
    for _ in range(5):
        time.sleep(rng.uniform(0, INTERVAL))  # the outage begins anywhere in a slot
        firing, done = count(stack, "firing"), count(stack, "resolved")
        began = time.monotonic()
        stack.set_service("api", up=False)
        wait_for(lambda: count(stack, "firing") > firing, "the page", 30)  # noqa: B023
        paged.append((time.monotonic() - began) / INTERVAL)
        back = time.monotonic()
        stack.set_service("api", up=True)
        wait_for(lambda: count(stack, "resolved") > done, "the resolve", 30)  # noqa: B023
        resolved.append((time.monotonic() - back) / INTERVAL)
        assert count(stack, "resolved") == done + 1  # resolved once
        time.sleep(1)
    with capsys.disabled():
        print(
            f"\npage after {', '.join(f'{p:.2f}' for p in paged)} intervals "
            f"(median {statistics.median(paged):.2f}); resolve after "
            f"{', '.join(f'{r:.2f}' for r in resolved)} intervals"
        )
    assert statistics.median(paged) <= 1.5
    assert max(resolved) <= 1.0
