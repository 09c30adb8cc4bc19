"""Replicas of one location merge their months: up over down over unknown, moment by moment,
whoever reads whom first; and real exporters on loopback, one of them killed and restarted,
that end with the month of an exporter that never stopped."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.ledger import Ledger, Month, MonthDocument, Term, month_bounds, phase
from tests.helpers import eventually, free_port

# -------------------------------------------------------------------------------------------
# The join, by hand

REASONS = ("timeout", "http_status", "connection_refused")
runs_drawn = st.lists(
    st.tuples(
        st.integers(0, 40), st.integers(1, 12), st.booleans(), st.sets(st.sampled_from(REASONS))
    ),
    max_size=6,
)


def month_of(raw: list[tuple[int, int, bool, set[str]]]) -> Month:
    """A month filled as one exporter fills it: the first result for a moment wins."""
    month = Month()
    for start, length, up, reasons in raw:
        month._fill(start, start + length, up, set() if up else reasons)
    return month


def painted(month: Month) -> dict[int, tuple[bool, frozenset[str]]]:
    return {t: (r.up, frozenset(r.reasons)) for r in month.runs for t in range(r.start, r.end)}


def as_document(month: Month) -> list[tuple[int, int, bool, tuple[str, ...]]]:
    return [(r.start, r.end, r.up, tuple(sorted(r.reasons))) for r in month.runs]


def well_formed(month: Month) -> None:
    for before, after in itertools.pairwise(month.runs):  # sorted, disjoint, merged
        assert before.end <= after.start
        assert not (before.end == after.start and before.up == after.up)


@given(runs_drawn, runs_drawn)
def test_a_moment_is_up_if_either_saw_it_up_down_if_all_that_probed_it_saw_it_down(
    ours: list[tuple[int, int, bool, set[str]]], theirs: list[tuple[int, int, bool, set[str]]]
) -> None:
    a, b = month_of(ours), month_of(theirs)
    expected: dict[int, tuple[bool, frozenset[str]]] = {}
    for t in range(0, 60):
        seen = [state for state in (painted(a).get(t), painted(b).get(t)) if state is not None]
        if not seen:
            continue
        up = any(state[0] for state in seen)
        reasons = frozenset() if up else frozenset().union(*(state[1] for state in seen))
        expected[t] = (up, reasons)
    before = painted(a)
    changed = a.merge(as_document(b))
    assert {t: up for t, (up, _) in painted(a).items()} == {
        t: up for t, (up, _) in expected.items()
    }
    # A run keeps the reasons seen anywhere in it (adjacent down runs are one run, as when
    # one exporter records them).
    for run in a.runs:
        moments = range(run.start, run.end)
        assert run.reasons == set().union(*(expected[t][1] for t in moments)), run
    assert changed == sum(1 for t, (up, _) in expected.items() if before.get(t, (None,))[0] != up)
    well_formed(a)


@given(runs_drawn, runs_drawn)
def test_the_merge_is_the_same_whoever_reads_whom_first_and_reading_again_changes_nothing(
    ours: list[tuple[int, int, bool, set[str]]], theirs: list[tuple[int, int, bool, set[str]]]
) -> None:
    a, b = month_of(ours), month_of(theirs)
    a_then_b, b_then_a = copy.deepcopy(a), copy.deepcopy(b)
    a_then_b.merge(as_document(b))
    b_then_a.merge(as_document(a))
    assert as_document(a_then_b) == as_document(b_then_a)
    version = a_then_b.version
    assert a_then_b.merge(as_document(b)) == 0
    assert a_then_b.merge(as_document(a_then_b)) == 0
    assert a_then_b.version == version  # nothing changed: no new figures, no ledger write


@given(runs_drawn, runs_drawn)
def test_own_results_join_too_so_a_result_merged_before_it_is_not_kept_by_luck(
    ours: list[tuple[int, int, bool, set[str]]], theirs: list[tuple[int, int, bool, set[str]]]
) -> None:
    """A replica may read the other's result of a slot before its own probe of that slot ends:
    its own result must then join what is there, or the two would keep different months."""
    early = month_of(theirs)
    for start, length, up, reasons in ours:
        early.join(start, start + length, up, None if up else next(iter(sorted(reasons)), None))
    late = Month()
    for start, length, up, reasons in ours:
        late.join(start, start + length, up, None if up else next(iter(sorted(reasons)), None))
    late.merge(as_document(month_of(theirs)))
    assert {t: s[0] for t, s in painted(early).items()} == {
        t: s[0] for t, s in painted(late).items()
    }
    well_formed(early)


def test_recovered_totals_bound_what_a_merge_may_cover() -> None:
    month = Month(carried={"up": 100}, carried_until=100)
    assert month.merge([(50, 150, False, ("timeout",))]) == 50
    assert [(r.start, r.end, r.up) for r in month.runs] == [(100, 150, False)]


def test_a_new_replica_takes_the_others_months_with_their_maintenance_and_terms() -> None:
    """A replica whose disk was lost starts empty and gets every kept month back."""
    zone = "Europe/Zurich"
    start = int(month_bounds("2026-11", ZoneInfo(zone))[0] * 1000)
    old = Ledger(None, zone)
    document = MonthDocument(
        runs=[
            (start + 1000, start + 61_000, True, ()),
            (start + 61_000, start + 121_000, False, ("timeout",)),
        ],
        maintenance=[(start + 200_000, start + 300_000)],
        terms=[Term(start, 0.995, "excluded")],
    )
    assert old.merge("api", start + 1000, {"2026-11": document, "not-a-month": document}) == 120_000
    book = old.books["api"]
    assert book.since == start + 1000
    month = book.months["2026-11"]
    assert month.maintenance == [(start + 200_000, start + 300_000)]
    assert month.terms == [Term(start, 0.995, "excluded")]
    assert [(r.up, sorted(r.reasons)) for r in month.runs] == [(True, []), (False, ["timeout"])]
    assert list(book.months) == ["2026-11"]
    # Its own terms, once it has some, are its own: the other's do not replace them.
    month.terms = [Term(start, 0.99, "down")]
    old.merge("api", None, {"2026-11": document})
    assert month.terms == [Term(start, 0.99, "down")]


def test_with_replicas_a_later_up_result_turns_a_down_slot_up() -> None:
    ledger = Ledger(None, "UTC")
    start = int(month_bounds("2026-11", ZoneInfo("UTC"))[0] * 1000)
    ledger.record("api", start / 1000 + 60, 60, False, "timeout")
    ledger.join = True
    ledger.record("api", start / 1000 + 60, 60, True)
    assert [(r.start, r.end, r.up) for r in ledger.books["api"].months["2026-11"].runs] == [
        (start + 60_000, start + 120_000, True)
    ]


# -------------------------------------------------------------------------------------------
# Real exporters on loopback


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
sla: {{name: Replicated, timezone: Europe/Zurich}}
services:
  api: {{interval: 1s, timeout: 500ms, http: {{url: "{url}"}}}}
"""


class Exporter:
    def __init__(self, name: str, workdir: Path, peers: list[str]) -> None:
        self.name, self.workdir, self.peers = name, workdir, peers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, config: Path) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        peers = [argument for peer in self.peers for argument in ("--replica.peer", peer)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sla_exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--storage.path",
            str(self.workdir / f"{self.name}-ledger.json"),
            "--replica.refresh-interval",
            "1s",
            *peers,
            stdout=log,
            stderr=log,
        )
        log.close()
        await eventually(self.ready, f"{self.name} ready", timeout=30)

    async def ready(self) -> bool:
        try:
            return bool(await self.get("/-/ready"))
        except OSError:
            return False

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def get(self, path: str) -> str:
        async with ClientSession() as session, session.get(self.url + path) as resp:
            return await resp.text() if resp.status == 200 else ""

    async def month(self) -> dict[str, float]:
        """The current month of `api` as this exporter exposes it, seconds per state."""
        months: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(await self.get("/metrics")):
            for sample in family.samples:
                if sample.name == "sla_month_seconds":
                    months.setdefault(sample.labels["month"], {})[sample.labels["state"]] = (
                        sample.value
                    )
        return months[max(months)] if months else {}

    async def runs(self, since: int, until: int) -> list[tuple[int, int, bool]]:
        """Its runs of `api` clipped to [since, until) ms."""
        document = json.loads(await self.get("/api/v1/months"))
        months = document["services"]["api"]["months"]
        return [
            (max(a, since), min(b, until), up)
            for a, b, up in months[max(months)]
            if a < until and b > since
        ]


async def at_mid_slot() -> None:
    """Sleep until the middle of a second: the slots of a 1 s interval start at the same phase
    in every exporter, so a switch half a slot away from each probe is seen alike by all."""
    await asyncio.sleep((phase("api", 1000) / 1000 + 0.5 - time.time()) % 1.0)


@asynccontextmanager
async def running_replicas(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Exporter], Target]]:
    """Replicas a and b, reading each other every second, and a witness probing alone."""
    target = Target()
    await target.server.start_server()
    config = tmp_path / "sla.yml"
    config.write_text(SLA.format(url=target.server.make_url("/")))
    a_port, b_port = free_port(), free_port()
    a = Exporter("a", tmp_path, [f"http://127.0.0.1:{b_port}"])
    b = Exporter("b", tmp_path, [f"http://127.0.0.1:{a_port}"])
    a.port, a.url = a_port, f"http://127.0.0.1:{a_port}"
    b.port, b.url = b_port, f"http://127.0.0.1:{b_port}"
    witness = Exporter("witness", tmp_path, [])  # probes alone and is never stopped
    exporters = {"a": a, "b": b, "witness": witness}
    try:
        for exporter in exporters.values():
            await exporter.start(config)
        yield exporters, target
    finally:
        for exporter in exporters.values():
            await exporter.stop()
        await target.server.close()


# Sync tests that run their own loop: the exporters are processes, so running the scenario
# on both test event loops (conftest.py) would test nothing more, at twice the time.
@pytest.mark.slow
def test_replicas_killed_in_turn_during_an_outage_keep_the_month_of_one_never_stopped(
    tmp_path: Path,
) -> None:
    asyncio.run(killed_in_turn(tmp_path))


async def killed_in_turn(tmp_path: Path) -> None:
    async with running_replicas(tmp_path) as (exporters, target):
        await _killed_in_turn(exporters, target, tmp_path)


async def _killed_in_turn(exporters: dict[str, Exporter], target: Target, tmp_path: Path) -> None:
    a, b, witness = exporters["a"], exporters["b"], exporters["witness"]
    await asyncio.sleep(3)  # every exporter past its first slot
    begin = int(time.time() * 1000)

    await at_mid_slot()
    target.up = False
    await asyncio.sleep(2)
    await b.kill()  # kill -9 mid-outage: its last slot may be half written
    await asyncio.sleep(2)
    await at_mid_slot()
    target.up = True
    await b.start(tmp_path / "sla.yml")  # b's gap, and what it had not written, from a
    await asyncio.sleep(2)
    await a.kill()  # then a, with b back: a's gap from b
    await asyncio.sleep(2)
    await a.start(tmp_path / "sla.yml")
    await asyncio.sleep(3)
    end = int(time.time() * 1000) - 2000  # slots decided by now

    async def same() -> bool:
        wanted = await witness.runs(begin, end)
        return await a.runs(begin, end) == wanted and await b.runs(begin, end) == wanted

    try:
        await eventually(same, "both replicas with the witness's runs", timeout=10)
    except pytest.fail.Exception:
        shown = {e.name: await e.runs(begin, end) for e in (a, b, witness)}
        raise AssertionError(f"the runs from {begin} to {end} differ: {shown}") from None
    down = [(x, y) for x, y, up in await witness.runs(begin, end) if not up]
    # One outage of whole slots (4 s and the wait for a mid-slot moment to end it).
    assert len(down) == 1 and (down[0][1] - down[0][0]) in (4000, 5000, 6000), down
    # The figures they expose agree too: nothing unknown for the time either replica was away.
    figures = [await e.month() for e in (a, b, witness)]
    assert figures[0]["down"] == figures[1]["down"] == figures[2]["down"]
    assert figures[0]["unknown"] == figures[1]["unknown"] == 0.0
    log_b = (tmp_path / "b.log").read_text()
    assert "from the other replicas' months" in log_b, log_b[-2000:]


@pytest.mark.slow
def test_a_replica_that_cannot_be_read_is_logged_once_and_shown_as_down(tmp_path: Path) -> None:
    asyncio.run(unreadable(tmp_path))


async def unreadable(tmp_path: Path) -> None:
    bad = web.Application()

    async def months(request: web.Request) -> web.Response:
        return web.json_response({"services": []})

    bad.router.add_get("/api/v1/months", months)
    server = TestServer(bad, host="127.0.0.1")
    await server.start_server()
    config = tmp_path / "sla.yml"
    config.write_text(SLA.format(url="http://127.0.0.1:9/"))
    exporter = Exporter("lonely", tmp_path, [str(server.make_url("/")), "http://127.0.0.1:9/"])
    # And itself, by a name (as a compose alias or a headless Service names every replica): it
    # knows itself among the addresses, even at start, before it answers.
    exporter.peers.append(f"http://localhost:{exporter.port}")
    try:
        await exporter.start(config)
        await asyncio.sleep(3)
        metrics = await exporter.get("/metrics")
        up = [line for line in metrics.splitlines() if line.startswith("sla_exporter_replica_up{")]
        assert len(up) == 2 and all(line.endswith(" 0.0") for line in up), up
        log = (tmp_path / "lonely.log").read_text()
        assert "localhost" not in log, log
        assert log.count("not a months document: timezone: Field required") == 1, log
        assert log.count("http://127.0.0.1:9/ (127.0.0.1): ClientConnectorError") == 1, log
    finally:
        await exporter.stop()
        await server.close()


def test_an_exporter_started_during_an_outage_goes_on_counting_the_failures_in_a_row() -> None:
    ledger = Ledger(None, "UTC")
    start = month_bounds("2026-11", ZoneInfo("UTC"))[0]
    grid = start + phase("api", 60_000) / 1000  # where the slots of api begin
    ledger.record("api", grid, 60, True)
    for slot in range(1, 4):
        ledger.record("api", grid + 60 * slot, 60, False, "timeout")
    # Just after its last failed slot (whoever probed it): 3 in a row, since the first.
    assert ledger.failing("api", 60, grid + 241) == (3, grid + 60)
    # The slot after it not known (the exporter was away longer): no run to go on.
    assert ledger.failing("api", 60, grid + 301) is None
    ledger.record("api", grid + 240, 60, True)
    assert ledger.failing("api", 60, grid + 301) is None  # up again
    assert Ledger(None, "UTC").failing("api", 60, grid) is None
