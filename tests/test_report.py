"""The month's SLA statement through a real exporter and a real Prometheus, and as people see it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sla_exporter.ledger import Ledger, month_bounds, month_key
from sla_exporter.report import availability
from tests.helpers import free_port, wait_for
from tests.stack import http_get, scraping_prometheus, screenshot
from tests.stack import launch as start_and_wait

pytestmark = pytest.mark.slow

ZONE = "Europe/Zurich"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # kept by CI, README says so


def previous_month() -> tuple[str, float, float]:
    zone = ZoneInfo(ZONE)
    this = month_key(datetime.now().timestamp(), zone)
    start = month_bounds(this, zone)[0]
    key = month_key(start - 1, zone)
    first, end = month_bounds(key, zone)
    return key, first, end


def seed(path: Path) -> dict[str, object]:
    """Last month as an exporter that ran through it would have left it: api down twice
    (400 minutes of timeouts, then 33 of refused connections) around an hour of announced
    maintenance; web down exactly its budget (432 of 43,200 minutes in a 30-day month, or the
    same 1 % of a 31-day one); sms never down."""
    key, first, end = previous_month()
    minutes = round((end - first) / 60)
    ledger = Ledger(path, ZONE)
    window = (first + 86400, first + 86400 + 3600)
    for service in ("api", "web", "sms"):
        ledger.advance(first, service, 0.99, "down", [window] if service == "api" else [])
    # Each service's results in time order, web and sms first: the ledger's clock follows them.
    web_down = minutes // 100 * 60  # exactly the budget: 1 % of the month, in whole minutes
    ledger.record("web", first, web_down, up=False, reason="http_status")
    ledger.record("web", first + web_down, end - first - web_down, up=True)
    ledger.record("sms", first, end - first, up=True)
    ledger.record("api", first, 3 * 86400, up=True)
    ledger.record("api", first + 3 * 86400, 400 * 60, up=False, reason="timeout")
    ledger.record("api", first + 3 * 86400 + 400 * 60, 86400, up=True)
    at = first + 5 * 86400
    ledger.record("api", first + 4 * 86400 + 400 * 60, at - first - 4 * 86400 - 400 * 60, True)
    ledger.record("api", at, 33 * 60, up=False, reason="connect")
    ledger.record("api", at + 33 * 60, end - at - 33 * 60, up=True)
    for service in ("api", "web", "sms"):
        ledger.advance(end, service, 0.99, "down", [window] if service == "api" else [])
    ledger.flush()
    return {"key": key, "first": first, "end": end, "minutes": minutes, "web_down": web_down}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    workdir = tmp_path_factory.mktemp("report")
    facts = seed(workdir / "ledger.json")
    with ExitStack() as stack:

        def launch(name: str, args: list[str], ready: str) -> None:
            start_and_wait(stack, name, args, workdir, ready)

        target = free_port()
        launch(
            "target",
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(target)],
            f"http://127.0.0.1:{target}/",
        )
        (workdir / "sla.yml").write_text(
            f"sla: {{name: Mailpro, timezone: {ZONE}}}\nservices:\n"
            + "".join(
                f"  {name}: {{interval: 1s, timeout: 500ms, http: {{url: 'http://127.0.0.1:{target}/'}}}}\n"
                for name in ("api", "web", "sms")
            )
        )
        port = free_port()
        exporter = f"http://127.0.0.1:{port}"
        launch(
            "exporter",
            [
                sys.executable,
                "-m",
                "sla_exporter",
                "--config.file",
                str(workdir / "sla.yml"),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--storage.path",
                str(workdir / "ledger.json"),
            ],
            f"{exporter}/-/ready",
        )
        prometheus = scraping_prometheus(stack, workdir, port, ["zrh"])
        key = facts["key"]
        wait_for(
            lambda: (
                "sla_month_seconds"
                in (
                    http_get(
                        f"{prometheus}/api/v1/query?query=sla_month_seconds{{month=%22{key}%22}}"
                    )
                    or ""
                )
                and '"result":[]'
                not in (
                    http_get(
                        f"{prometheus}/api/v1/query?query=sla_month_seconds{{month=%22{key}%22}}"
                    )
                    or ""
                )
            ),
            "last month's series in Prometheus",
        )
        yield {**facts, "workdir": workdir, "exporter": exporter, "prometheus": prometheus}


def report(bench: dict[str, object], fmt: str, output: Path | None = None) -> str:
    args = [
        sys.executable,
        "-m",
        "sla_exporter.report",
        "--prometheus.url",
        str(bench["prometheus"]),
        "--exporter.url",
        str(bench["exporter"]),
        "--month",
        str(bench["key"]),
        "--format",
        fmt,
    ]
    if output is not None:
        args += ["--output", str(output)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_availability_is_truncated_so_a_breach_never_reads_as_the_objective() -> None:
    assert availability(43200 - 432, 43200) == "99.000"
    assert availability(43200 * 1000 - 432_001, 43200 * 1000) == "98.999"  # 98.99999...
    assert availability(0, 0) is None


def test_the_statement_s_figures_are_the_month_series_and_its_incidents_add_up(
    bench: dict[str, object],
) -> None:
    document = json.loads(report(bench, "json"))
    assert document["schema"] == "sla-report/1"
    assert (document["sla"], document["month"], document["final"]) == (
        "Mailpro",
        bench["key"],
        True,
    )
    services = {s["service"]: s for s in document["services"]}
    minutes = int(bench["minutes"])  # type: ignore[call-overload]
    api = services["api"]["figure"]
    # 433 failed minutes of the month less the hour of maintenance.
    counted = (minutes - 60) * 60
    assert api["downtime_seconds"] == 433 * 60
    assert api["maintenance_seconds"] == 3600
    assert api["counted_seconds"] == counted
    assert api["availability"] == availability(counted - 433 * 60, counted)
    assert api["met"] is False
    assert api["budget_seconds"] == pytest.approx(counted / 100, abs=0.001)
    web = services["web"]["figure"]
    assert web["availability"] == "99.000" and web["met"] is True  # exactly at the objective
    assert services["sms"]["figure"]["availability"] == "100.000"
    incidents = services["api"]["incidents"]
    assert [(i["duration_seconds"], i["reasons"]) for i in incidents] == [
        (400 * 60, ["timeout"]),
        (33 * 60, ["connect"]),
    ]
    assert sum(i["duration_seconds"] for i in incidents) == api["downtime_seconds"]
    assert [m["duration_seconds"] for m in services["api"]["maintenance"]] == [3600]
    assert all(not s["notes"] for s in services.values())
    # Month by month: the reported month beside this one, with the same figure.
    history = {h["month"]: h for h in services["api"]["history"]}
    assert history[bench["key"]] == {
        "month": bench["key"],
        "availability": api["availability"],
        "met": False,
    }
    assert len(history) == 2


def test_the_statement_reads_well_on_paper_a_screen_and_a_phone(bench: dict[str, object]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "report.html"
    report(bench, "html", page)
    text = page.read_text()
    assert "<script" not in text
    assert "98.99" in text and "breached" in text and "400" not in text.split("<body>")[0]
    for name, width in (("report-desktop.png", 1280), ("report-phone.png", 390)):
        shot = ARTIFACTS / name
        screenshot(page.as_uri(), shot, width, 1400, Path(str(bench["workdir"])) / "chromium")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def squares(page: str, service: str) -> dict[str, str]:
    """The 90-day strip of `service` on the status page: day -> kind of its square."""
    section = page.split(f'<span class="name">{service}</span>', 1)[1].split('class="legend"')[0]
    return dict(
        (title.split(":")[0], kind)
        for kind, title in re.findall(r'<span class="(\w+)" title="([^"]+)"', section)
    )


def test_the_status_page_shows_what_the_ledger_counts_on_a_screen_and_a_phone(
    bench: dict[str, object],
) -> None:
    page = http_get(f"{bench['exporter']}/status") or ""
    assert "<script" not in page
    assert "127.0.0.1" not in page  # no target address, nothing a probe sent or got
    metrics = http_get(f"{bench['exporter']}/metrics") or ""
    this_month = month_key(datetime.now().timestamp(), ZoneInfo(ZONE))
    for service in ("api", "web", "sms"):
        states = {
            m.group(1): float(m.group(2))
            for m in re.finditer(
                rf'sla_month_seconds\{{month="{this_month}",sla_service="{service}",'
                r'state="(\w+)"\} (\S+)',
                metrics,
            )
        }
        counted = states["up"] + states["down"] + states["unknown"]
        shown = availability(states["up"], counted)
        text = f"{shown} % this month" if shown else "no figure yet this month"
        assert text in page.split(f'<span class="name">{service}</span>')[1]
    first = datetime.fromtimestamp(float(bench["first"]), ZoneInfo(ZONE)).date()  # type: ignore[arg-type]
    day = lambda n: (first + timedelta(n)).isoformat()  # noqa: E731
    api, web = squares(page, "api"), squares(page, "web")
    assert len(api) == 90
    assert (api[day(3)], api[day(5)], api[day(1)], api[day(10)]) == ("down", "partial", "up", "up")
    assert web[day(0)] == "down"  # 432 minutes: 30 % of that day

    ARTIFACTS.mkdir(exist_ok=True)
    for name, width in (("status-desktop.png", 1280), ("status-phone.png", 390)):
        shot = ARTIFACTS / name
        screenshot(
            f"{bench['exporter']}/status",
            shot,
            width,
            1000,
            Path(str(bench["workdir"])) / "chromium",
        )
        assert shot.stat().st_size > 10_000
