"""The ticket events endpoint and the support metrics, through the exporter's real HTTP server."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from zoneinfo import ZoneInfo

import bcrypt
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from sla_exporter.exporter import Exporter
from sla_exporter.report import support_summary
from sla_exporter.scheduler import SystemClock
from sla_exporter.web import make_app
from sla_exporter.webconfig import WebConfig
from tests.test_exporter import samples, value

TOKEN = "support-token-5d1e9a0c"
PATH = "/api/v1/support/events"
ZURICH = ZoneInfo("Europe/Zurich")
# The exporter's clock for these tests: Monday 19 January 2026, 16:00 in Geneva.
NOW = datetime(2026, 1, 19, 16, 0, tzinfo=ZURICH).timestamp()

SLA = """
sla: {name: Mailpro, timezone: Europe/Zurich}
services:
  website: {interval: 1h, http: {url: "http://127.0.0.1:9/"}}
support:
  database: data/support.db
  token: !env SLA_SUPPORT_TOKEN
  max_body_bytes: 4096
  calendars:
    europe: {timezone: Europe/Zurich, hours: {mon-fri: ["08:00-17:00"]}}
  policies:
    first-level:
      match: {level: 1}
      calendar: europe
      targets: {first_response: 4h, resolution: 5 working days}
      warn_before: 1h
      objective: 0.9
"""


class FixedTime(SystemClock):
    """Real monotonic time and sleeps; a fixed wall clock for the ticket deadlines."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def write(path: Path, text: str = SLA) -> None:
    path.write_text(text)


@pytest.fixture
async def support(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Exporter, TestServer]]:
    monkeypatch.setenv("SLA_SUPPORT_TOKEN", TOKEN)
    write(tmp_path / "sla.yml")
    exporter = Exporter(str(tmp_path / "sla.yml"), clock=FixedTime(NOW), max_start_jitter=0.01)
    await exporter.start()
    server = TestServer(make_app(exporter), host="127.0.0.1")
    await server.start_server()
    yield exporter, server
    await server.close()
    await exporter.stop()


def at(local: str) -> str:
    return datetime.fromisoformat(local).replace(tzinfo=ZURICH).isoformat()


def created(n: str, local: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"{n}-c", "ticket": n, "type": "created", "time": at(local), "level": 1, **extra}


def reply(n: str, local: str) -> dict[str, Any]:
    return {"id": f"{n}-r", "ticket": n, "type": "agent_replied", "time": at(local)}


async def post(
    server: TestServer,
    body: Any,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        ClientSession() as session,
        session.post(server.make_url(PATH), data=data, headers=sent) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


async def metrics(server: TestServer) -> str:
    async with ClientSession() as session, session.get(server.make_url("/metrics")) as resp:
        return await resp.text()


def support_samples(text: str) -> dict[Any, float]:
    return {k: v for k, v in samples(text).items() if k[0].startswith("sla_support_")}


# Four tickets at Monday 16:00 (first response due 4 business hours after creation):
#   A created 09:00, answered 10:00      -> first response met; resolution running
#   B created 11:00, no answer           -> due 15:00: breached
#   C created 13:30, no answer           -> due Tuesday 08:30, 1.5 h left: within target
#   D created 15:30, paused 15:45        -> paused
TICKETS = [
    created("A", "2026-01-19T09:00"),
    reply("A", "2026-01-19T10:00"),
    created("B", "2026-01-19T11:00"),
    created("C", "2026-01-19T13:30"),
    created("D", "2026-01-19T15:30"),
    {"id": "D-p", "ticket": "D", "type": "paused", "time": at("2026-01-19T15:45")},
]


async def test_events_are_stored_and_measured_as_metrics(support) -> None:
    _, server = support
    assert await post(server, TICKETS) == (200, {"stored": 6, "duplicates": 0}, ANY)
    text = await metrics(server)

    def open_(state: str) -> float | None:
        return value(
            text, "sla_support_open_tickets", policy="first-level", calendar="europe", state=state
        )

    assert [open_(s) for s in ("within_target", "warning", "breached", "paused")] == [2, 0, 1, 1]
    labels = {"policy": "first-level", "target": "first_response"}
    assert value(text, "sla_support_next_deadline_business_seconds", **labels) == 1.5 * 3600
    assert value(text, "sla_support_next_deadline_timestamp_seconds", **labels) == (
        datetime(2026, 1, 20, 8, 30, tzinfo=ZURICH).timestamp()
    )
    assert value(text, "sla_support_breaches_total", **labels) == 1
    first = "sla_support_first_response_business_seconds"
    assert value(text, f"{first}_count", policy="first-level") == 1
    assert value(text, f"{first}_bucket", policy="first-level", le="3600") == 1
    month = {**labels, "month": "2026-01"}
    assert value(text, "sla_support_month_measured", **month) == 2  # A met, B breached
    assert value(text, "sla_support_month_breached", **month) == 1
    assert value(text, "sla_support_objective_ratio", policy="first-level") == 0.9
    assert value(text, "sla_support_calendar_open", calendar="europe") == 1
    resolution = {"policy": "first-level", "target": "resolution", "clock": "business"}
    assert value(text, "sla_support_target_seconds", **resolution) == 45 * 3600
    assert value(text, "sla_support_stored_events") == 6
    assert value(text, "sla_support_events_total", outcome="stored") == 6


async def test_the_warning_state_starts_warn_before_the_deadline(support) -> None:
    _, server = support
    await post(server, [created("E", "2026-01-19T13:00")])  # due 17:00, 1 h left
    text = await metrics(server)
    assert (
        value(
            text,
            "sla_support_open_tickets",
            policy="first-level",
            calendar="europe",
            state="warning",
        )
        == 1
    )


async def test_a_repeated_post_changes_nothing(support) -> None:
    _, server = support
    await post(server, TICKETS)
    before = support_samples(await metrics(server))
    assert await post(server, TICKETS) == (200, {"stored": 0, "duplicates": 6}, ANY)
    assert await post(server, TICKETS[0]) == (200, {"stored": 0, "duplicates": 1}, ANY)
    after = support_samples(await metrics(server))
    changed = {k for k in before if before[k] != after[k]}
    assert {k[0] for k in changed} == {"sla_support_events_total"}  # only the duplicates count


async def test_a_restart_rebuilds_every_ticket_from_the_database(support, tmp_path: Path) -> None:
    exporter, server = support
    await post(server, TICKETS)
    before = support_samples(await metrics(server))
    await server.close()
    await exporter.stop()
    again = Exporter(str(tmp_path / "sla.yml"), clock=FixedTime(NOW), max_start_jitter=0.01)
    await again.start()
    server2 = TestServer(make_app(again), host="127.0.0.1")
    await server2.start_server()
    try:
        after = support_samples(await metrics(server2))
    finally:
        await server2.close()
        await again.stop()
    # Counters of this process's requests start again at 0; everything derived is the same.
    since_start = ("sla_support_events_total", "sla_support_last_event_received_timestamp_seconds")
    assert {k: v for k, v in after.items() if k[0] not in since_start} == {
        k: v for k, v in before.items() if k[0] not in since_start
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_a_missing_or_wrong_token_is_401_and_stores_nothing(
    support, headers: dict[str, str]
) -> None:
    exporter, server = support
    status, _, response_headers = await post(server, TICKETS, token=None, headers=headers)
    assert status == 401
    assert response_headers["WWW-Authenticate"] == 'Bearer realm="sla-exporter"'
    assert exporter.support.events_stored == 0
    assert value(await metrics(server), "sla_support_rejected_requests_total", code="401") == 1


async def test_an_oversized_body_is_413(support) -> None:
    exporter, server = support
    big = [created(f"T{i}", "2026-01-19T09:00") for i in range(60)]  # over 4096 bytes
    status, body, _ = await post(server, big)
    assert status == 413 and "4096 bytes" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000

    async with (
        ClientSession() as session,
        session.post(
            server.make_url(PATH), data=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp,
    ):
        assert resp.status == 413
    assert exporter.support.events_stored == 0


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (
            b"{not json",
            ["invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"],
        ),
        (b"\xff\xfe", ["invalid JSON: not UTF-8 text"]),
        # Deeper than Python's recursion limit (within max_body_bytes): was a 500 and a traceback.
        (b"[" * 2000 + b"]" * 2000, ["invalid JSON: nested too deeply"]),
        (
            json.dumps([TICKETS[0], {**TICKETS[2], "time": "2026-01-19 11:00"}]).encode(),
            [
                "[1].time: must be a date and time with a UTC offset, like "
                '2026-11-28T22:00:00+01:00, got "2026-01-19 11:00"'
            ],
        ),
        (
            json.dumps({**TICKETS[0], "ticket_id": 5}).encode(),
            ['ticket_id: unknown key "ticket_id"; did you mean "ticket"?'],
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field_and_stores_nothing(
    support, raw: bytes, errors: list[str]
) -> None:
    exporter, server = support
    status, body, _ = await post(server, None, raw=raw)
    assert (status, body) == (400, {"errors": errors})
    assert exporter.support.events_stored == 0


async def test_an_id_reused_for_another_event_is_409(support) -> None:
    exporter, server = support
    await post(server, TICKETS[:1])
    status, body, _ = await post(server, [TICKETS[2], {**TICKETS[0], "level": 2}])
    assert status == 409
    assert body["errors"][0].startswith('[1].id: event "A-c" is already stored')
    assert exporter.support.events_stored == 1


async def test_a_reload_applies_new_targets_and_keeps_every_ticket(support, tmp_path: Path) -> None:
    exporter, server = support
    await post(server, TICKETS)
    write(tmp_path / "sla.yml", SLA.replace("first_response: 4h", "first_response: 8h"))
    assert await exporter.reload() is None
    text = await metrics(server)
    # B (created 11:00) now has until Tuesday 10:00: nothing is breached any more.
    assert (
        value(
            text,
            "sla_support_open_tickets",
            policy="first-level",
            calendar="europe",
            state="breached",
        )
        == 0
    )
    assert value(text, "sla_support_stored_events") == 6


async def test_a_reload_to_an_unusable_database_keeps_the_running_one(
    support, tmp_path: Path
) -> None:
    exporter, server = support
    await post(server, TICKETS)
    (tmp_path / "data" / "dir.db").mkdir()
    write(tmp_path / "sla.yml", SLA.replace("data/support.db", "data/dir.db"))
    error = await exporter.reload()
    assert error is not None and "support.database: cannot use the ticket database" in str(error)
    assert (await post(server, [reply("B", "2026-01-19T15:59")]))[0] == 200
    assert exporter.support.events_stored == 7


async def test_without_a_support_section_there_is_no_endpoint_and_no_metric(
    support, tmp_path: Path
) -> None:
    exporter, server = support
    write(tmp_path / "sla.yml", SLA.split("support:")[0])
    assert await exporter.reload() is None
    status, _, _ = await post(server, TICKETS)
    assert status == 404
    assert "sla_support_" not in await metrics(server)


async def test_basic_auth_guards_the_rest_but_the_endpoint_takes_its_token(support) -> None:
    exporter, _ = support
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(4)).decode()
    web_config = WebConfig.model_validate({"basic_auth_users": {"prometheus": hashed}})
    server = TestServer(make_app(exporter, web_config), host="127.0.0.1")
    await server.start_server()
    try:
        assert (await post(server, TICKETS[:1]))[0] == 200
        assert (await post(server, TICKETS[:1], token="nope-nope-nope-nope"))[0] == 401
        async with ClientSession() as session, session.get(server.make_url("/metrics")) as resp:
            assert resp.status == 401
    finally:
        await server.close()


async def test_the_token_never_shows_in_metrics_pages_or_logs(
    support, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = support
    caplog.set_level(logging.DEBUG)
    await post(server, TICKETS)
    await post(server, TICKETS, token="wrong-token-0123456")
    async with ClientSession() as session:
        for path in ("/metrics", "/"):
            async with session.get(server.make_url(path)) as resp:
                assert TOKEN not in await resp.text()
    assert TOKEN not in caplog.text


async def test_the_support_metrics_pass_promtool_check_metrics(support) -> None:
    _, server = support
    await post(server, TICKETS)
    text = await metrics(server)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus)"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


async def test_the_month_statement_names_the_late_tickets_and_the_policy_s_compliance(
    support,
) -> None:
    _, server = support
    assert (await post(server, TICKETS))[0] == 200
    async with (
        ClientSession() as session,
        session.get(server.make_url("/api/v1/report?month=2026-01")) as resp,
    ):
        document = await resp.json()
    assert document["support_misses"] == [
        {"ticket": "B", "policy": "first-level", "target": "first_response"}
    ]
    # The report's support part, from the month series as Prometheus would return them.
    results: dict[str, list[dict[str, Any]]] = {}
    for family in text_string_to_metric_families(await metrics(server)):
        for sample in family.samples:
            results.setdefault(sample.name, []).append(
                {"metric": dict(sample.labels), "value": [NOW, str(sample.value)]}
            )
    month = [r for r in results["sla_support_month_measured"] if r["metric"]["month"] == "2026-01"]
    late = [r for r in results["sla_support_month_breached"] if r["metric"]["month"] == "2026-01"]
    [policy] = support_summary(
        month,
        late,
        results["sla_support_objective_ratio"],
        results["sla_support_policy_info"],
        [document],
    )
    assert policy["calendar"] == "europe"
    assert (policy["measured"], policy["breached"], policy["compliance"]) == (2, 1, "50.000")
    assert policy["met"] is False  # 1 of 2 within target against 90 %
    assert [m["ticket"] for m in policy["misses"]] == ["B"]
