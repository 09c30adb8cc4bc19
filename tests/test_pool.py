"""One month figure per service across locations: the quorum moment by moment, and two real
exporters that read each other's months over loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession, encode_basic_auth, web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.pool import QUORUM, Timeline, pool
from tests.helpers import eventually, free_port
from tests.stack import ROOT


def test_the_pool_uses_the_live_rules_quorum() -> None:
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "recording.yml").read_text())
    [rule] = [
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("record") == "sla:location_quorum:ratio"
    ]
    assert rule["expr"].strip() == f"vector({QUORUM})"


def test_down_needs_more_than_half_of_the_locations_that_know_the_moment() -> None:
    zrh = Timeline(0, ((0, 100, True), (100, 200, False), (200, 400, True)))
    fra = Timeline(10, ((10, 150, True), (150, 250, False), (250, 400, True)))
    nyc = Timeline(0, ((0, 120, False), (120, 300, True)))  # unreachable after 300
    pooled = pool([zrh, fra, nyc])
    assert pooled.since == 0
    assert pooled.runs == (
        (0, 100, True),  # nyc alone down of three (of two before fra's first slot at 10)
        (100, 120, False),  # zrh and nyc: two of three
        (120, 150, True),  # zrh alone
        (150, 200, False),  # zrh and fra
        (200, 400, True),  # fra alone down of three, then of two: not more than half
    )
    # Two locations: one down is half, not more than half; both down is down.
    assert pool([Timeline(0, ((0, 10, False),)), Timeline(0, ((0, 10, True),))]).runs == (
        (0, 10, True),
    )
    # Nobody knows a moment: no run there (unknown, never down).
    assert pool([Timeline(0, ((0, 10, False),)), Timeline(20, ((20, 30, True),))]).runs == (
        (0, 10, False),
        (20, 30, True),
    )


spans = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 15), st.booleans()), max_size=6)


def disjoint(raw: list[tuple[int, int, bool]]) -> Timeline:
    """Spans drawn at random, made sorted and disjoint (a location's month is)."""
    painted: dict[int, bool] = {}
    for start, length, up in raw:
        for t in range(start, start + length):
            painted.setdefault(t, up)
    runs: list[tuple[int, int, bool]] = []
    for t in sorted(painted):
        if runs and runs[-1][1] == t and runs[-1][2] == painted[t]:
            runs[-1] = (runs[-1][0], t + 1, painted[t])
        else:
            runs.append((t, t + 1, painted[t]))
    return Timeline(min(painted) if painted else None, tuple(runs))


@given(st.lists(spans, min_size=1, max_size=4))
def test_the_pool_matches_counting_each_moment_by_hand(locations: list) -> None:
    timelines = [disjoint(raw) for raw in locations]
    pooled = pool(timelines)
    states: dict[int, bool] = {t: up for a, b, up in pooled.runs for t in range(a, b)}
    for t in range(0, 60):
        seen = [up for tl in timelines for a, b, up in tl.runs if a <= t < b]
        if not seen:
            assert t not in states
        else:
            assert states[t] == (seen.count(False) <= QUORUM * len(seen)), (t, seen)
    for before, after in itertools.pairwise(pooled.runs):
        assert before[1] <= after[0] and not (before[1] == after[0] and before[2] == after[2])


# -------------------------------------------------------------------------------------------
# Two exporters on loopback


class Target:
    """An HTTP target whose health the test switches."""

    def __init__(self) -> None:
        self.up = True
        app = web.Application()
        app.router.add_get("/", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.up else 503, text="ok")


SLA = """
sla: {{name: Pooled, timezone: Europe/Zurich}}
services:
  api: {{interval: 1s, timeout: 500ms, http: {{url: "{url}"}}}}
locations:
  zrh:
    url: "http://127.0.0.1:{zrh}"
    basic_auth: {{username: pool, password: !env POOL_PASSWORD}}
  fra:
    url: "http://127.0.0.1:{fra}"
    basic_auth: {{username: pool, password: !env POOL_PASSWORD}}
"""
WEB_CONFIG = "basic_auth_users:\n  pool: {hash}\n"


class Location:
    def __init__(self, name: str, port: int, workdir: Path) -> None:
        self.name, self.port, self.workdir = name, port, workdir
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, config: Path, web_config: Path) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sla_exporter",
            "--config.file",
            str(config),
            "--web.config.file",
            str(web_config),
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--storage.path",
            str(self.workdir / f"{self.name}-ledger.json"),
            "--location",
            self.name,
            "--locations.refresh-interval",
            "1s",
            stdout=log,
            stderr=log,
            env={**os.environ, "POOL_PASSWORD": "s3cret-pool"},
        )
        log.close()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def get(self, path: str) -> str:
        headers = {"Authorization": encode_basic_auth("pool", "s3cret-pool")}
        async with (
            ClientSession() as session,
            session.get(self.url + path, headers=headers) as resp,
        ):
            return await resp.text()

    async def pooled(self) -> dict[str, float]:
        """The current month of `api` pooled, as this location exposes it."""
        months: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(await self.get("/metrics")):
            for sample in family.samples:
                if sample.name == "sla_month_pooled_seconds":
                    months.setdefault(sample.labels["month"], {})[sample.labels["state"]] = (
                        sample.value
                    )
        return months[max(months)] if months else {}

    async def down_spans(self) -> set[int]:
        """The milliseconds this location saw `api` down, this month."""
        document = json.loads(await self.get("/api/v1/months"))
        months = document["services"]["api"]["months"]
        return {t for a, b, up in months[max(months)] if not up for t in range(a, b)}


@pytest.fixture
async def locations(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Location], dict[str, Target]]]:
    import bcrypt

    targets = {name: Target() for name in ("zrh", "fra")}
    for target in targets.values():
        await target.server.start_server()
    sites = {name: Location(name, free_port(), tmp_path) for name in ("zrh", "fra")}
    web_config = tmp_path / "web.yml"
    digest = bcrypt.hashpw(b"s3cret-pool", bcrypt.gensalt(4)).decode()
    web_config.write_text(WEB_CONFIG.format(hash=digest))
    for name, site in sites.items():
        # The same SLA file but for the target's address: each location reaches "its" api.
        config = tmp_path / f"{name}.yml"
        config.write_text(
            SLA.format(
                url=targets[name].server.make_url("/"), zrh=sites["zrh"].port, fra=sites["fra"].port
            )
        )
        await site.start(config, web_config)
    yield sites, targets
    for site in sites.values():
        await site.stop()
    for target in targets.values():
        await target.server.close()


@pytest.mark.slow
async def test_the_pooled_month_is_down_only_where_more_than_half_the_locations_were(
    locations: tuple[dict[str, Location], dict[str, Target]],
) -> None:
    sites, targets = locations
    zrh, fra = sites["zrh"], sites["fra"]

    async def ready() -> bool:
        try:
            return bool((await zrh.pooled()).get("up")) and bool((await fra.pooled()).get("up"))
        except OSError:
            return False

    await eventually(ready, "both locations pooling", timeout=20)
    # zrh fails for 4 s, fra for 4 s from 2 s into that: about 2 s of both.
    targets["zrh"].up = False
    await asyncio.sleep(2)
    targets["fra"].up = False
    await asyncio.sleep(2)
    targets["zrh"].up = True
    await asyncio.sleep(2)
    targets["fra"].up = True
    await asyncio.sleep(3)
    both = (await zrh.down_spans()) & (await fra.down_spans())
    assert 1000 <= len(both) <= 3000  # the overlap, in whole slots of the shared grid
    assert len(both) % 1000 == 0

    async def settled() -> bool:
        figures = [await site.pooled() for site in (zrh, fra)]
        return all(f["down"] * 1000 == len(both) for f in figures)

    await eventually(
        settled, "the overlap and nothing else pooled as down in both locations", timeout=20
    )
    for site in (zrh, fra):
        assert (await site.pooled())["unknown"] == 0

    # fra's exporter goes away: zrh carries on alone. fra's time after its last spans is
    # unknown there, not down; zrh's own view decides the quorum (one of one).
    await fra.stop()
    await asyncio.sleep(3)
    pooled = await zrh.pooled()
    assert pooled["down"] * 1000 == len(both)
    assert pooled["unknown"] == 0
    targets["zrh"].up = False
    await asyncio.sleep(3)
    targets["zrh"].up = True
    alone = await zrh.down_spans()
    later = await zrh.pooled()
    assert later["down"] * 1000 > len(both)  # zrh alone, the only location that knows, is down
    assert later["down"] * 1000 <= len(both) + len(alone)


@pytest.mark.slow
async def test_a_location_needs_its_name_among_the_locations(tmp_path: Path) -> None:
    config = tmp_path / "sla.yml"
    config.write_text(SLA.format(url="http://127.0.0.1:9/", zrh=1, fra=2))
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sla_exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{free_port()}",
        "--storage.path",
        "",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "POOL_PASSWORD": "x"},
    )
    _, err = await done.communicate()
    assert done.returncode == 1
    assert "start the exporter with --location NAME" in err.decode()
