"""The exporter as a whole, in-process: real probes of loopback servers, served over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest
import trustme
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from sla_exporter import web as web_module
from sla_exporter.exporter import Exporter
from sla_exporter.web import LINKS_KEY, make_app
from sla_exporter.webconfig import WebConfig
from tests.conftest import server_context
from tests.dns_servers import dns_server
from tests.helpers import eventually

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
SECRET = "TOPSECRET-7f3a"


class Target:
    """A loopback service with an `up` switch; its API needs the secret token."""

    def __init__(self) -> None:
        self.up = True
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/api", self.api)
        return app

    async def index(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self.up:
            return web.Response(status=500, text=f"error, token was {SECRET}")
        return web.Response(text="Welcome to Mailpro")

    async def api(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            return web.json_response({"status": "unauthorized"}, status=401)
        return web.json_response({"status": "ok"})


@pytest.fixture
async def target(localhost_cert: trustme.LeafCert) -> AsyncIterator[tuple[Target, str, str]]:
    """The target served over plain HTTP and HTTPS; yields (target, http_base, https_base)."""
    target = Target()
    plain = TestServer(target.app(), host="127.0.0.1")
    secure = TestServer(target.app(), host="127.0.0.1")
    await plain.start_server()
    await secure.start_server(ssl=server_context(localhost_cert))
    yield target, f"http://127.0.0.1:{plain.port}", f"https://localhost:{secure.port}"
    await plain.close()
    await secure.close()


def write_config(path: Path, http: str, https: str, ca_file: str, extra: str = "") -> None:
    path.write_text(
        f"""
sla: {{name: Mailpro, timezone: Europe/Zurich, objective: 0.99}}
services:
  website:
    description: Website and FAQ
    interval: 1s
    timeout: 800ms
    http: {{url: "{http}/", expect: {{body_contains: Mailpro}}}}
  api:
    interval: 1s
    timeout: 800ms
    http:
      url: "{https}/api"
      headers: {{Authorization: !env SLA_TEST_TOKEN}}
      expect: {{json: {{status: ok}}}}
      tls: {{ca_file: "{ca_file}"}}
  refused:
    interval: 1s
    timeout: 300ms
    confirm: 200ms
    http: {{url: "http://127.0.0.1:9/"}}
{extra}
"""
    )


@pytest.fixture
async def running(
    target: tuple[Target, str, str],
    ca_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Exporter, TestServer, Path, Target]]:
    """A started exporter with its web app on a loopback port."""
    monkeypatch.setenv("SLA_TEST_TOKEN", f"Bearer {SECRET}")
    the_target, http, https = target
    config = tmp_path / "sla.yml"
    write_config(config, http, https, ca_file)
    exporter = Exporter(str(config), storage_path=tmp_path / "ledger.json", max_start_jitter=0.05)
    await exporter.start()
    server = TestServer(make_app(exporter), host="127.0.0.1")
    await server.start_server()
    yield exporter, server, config, the_target
    await server.close()
    await exporter.stop()


async def fetch(server: TestServer, path: str, method: str = "GET") -> tuple[int, str]:
    async with ClientSession() as session, session.request(method, server.make_url(path)) as resp:
        return resp.status, await resp.text()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def test_metrics_show_each_service_result_and_exact_counters(running) -> None:
    exporter, server, _, _ = running

    async def probed_twice() -> bool:
        return all(s.probes >= 2 for s in exporter.store.services.values())

    await eventually(probed_twice)
    _, text = await fetch(server, "/metrics")
    assert value(text, "sla_probe_success", sla_service="website") == 1
    assert value(text, "sla_probe_success", sla_service="api") == 1
    assert value(text, "sla_probe_success", sla_service="refused") == 0
    state = exporter.store.services["refused"]
    assert value(text, "sla_probes_total", sla_service="refused") == state.probes
    assert value(text, "sla_probe_failures_total", sla_service="refused") == state.failures
    assert (
        value(text, "sla_probe_failure_reasons_total", sla_service="refused", reason="connect")
        == state.failures
    )
    assert value(text, "sla_probe_interval_seconds", sla_service="api") == 1
    assert value(text, "sla_objective_ratio", sla_service="api") == 0.99
    assert value(text, "sla_probe_tls_cert_expiry_timestamp_seconds", sla_service="api")
    assert value(text, "sla_exporter_config_last_reload_successful") == 1
    assert value(text, "sla_info", sla="Mailpro", timezone="Europe/Zurich") == 1


async def test_the_metrics_output_passes_promtool_check_metrics(running) -> None:
    exporter, server, _, _ = running
    await eventually(lambda: _probed(exporter))
    _, text = await fetch(server, "/metrics")
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus)"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


async def _probed(exporter: Exporter) -> bool:
    return all(s.last is not None for s in exporter.store.services.values())


async def _certificate_seen(exporter: Exporter, name: str) -> bool:
    last = exporter.store.services[name].last
    return last is not None and last.tls_expiry is not None


def catalogue(text: str) -> str:
    """Metric names, types and label names, one line each: renames must be deliberate."""
    lines = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("python_", "process_")):
            continue
        for sample in family.samples:
            labels = ",".join(sorted(sample.labels))
            lines.add(f"{sample.name} {family.type} {{{labels}}}")
    return "\n".join(sorted(lines)) + "\n"


MAIL_ZONE = """
mail.test. 60 IN MX 10 mx.mail.test.
mx.mail.test. 60 IN A 127.0.0.25
mail.test. 60 IN TXT "v=spf1 ip4:127.0.0.25 -all"
_dmarc.mail.test. 60 IN TXT "v=DMARC1; p=reject"
"""


async def test_the_metric_catalogue_matches_the_golden_file(running) -> None:
    exporter, server, config, _ = running
    with dns_server(MAIL_ZONE) as (_, nameserver):
        # A maintenance window that covers now, so its series show too; and the mail kinds,
        # whose series only they have (a delivery to nowhere, a domain with its checks).
        text = config.read_text().replace(
            "services:\n",
            f"""services:
  delivery:
    interval: 1s
    timeout: 800ms
    mail_delivery:
      submit: {{host: 127.0.0.1, port: 9, from: probe@mail.test,
               auth: {{username: probe, password: x}}}}
      to: inbox@mail.test
      mailbox: {{host: 127.0.0.1, port: 9, username: inbox, password: x}}
  domain:
    interval: 1s
    timeout: 800ms
    mail_domain: {{domain: mail.test, nameservers: ["{nameserver}"]}}
""",
        ) + (
            "maintenance:\n  - services: [website]\n"
            "    start: 2020-01-01T00:00:00Z\n    end: 2099-01-01T00:00:00Z\n"
        )
        config.write_text(text)
        assert await exporter.reload() is None
        # Every service probed, and the HTTPS one with its certificate seen: on a loaded machine
        # its name can take longer to resolve than its timeout, and a failed probe has no expiry.
        await eventually(lambda: _probed(exporter))
        await eventually(lambda: _certificate_seen(exporter, "api"), "api's certificate seen")
    _, body = await fetch(server, "/metrics")
    got = catalogue(body)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), (
        "the metric catalogue changed; if that is deliberate, run UPDATE_GOLDEN=1 pytest and "
        "update docs/METRICS.md"
    )


async def test_a_bad_reload_keeps_the_running_config_and_says_why(running) -> None:
    exporter, server, config, _ = running
    good = config.read_text()
    config.write_text(
        good.replace("interval: 1s\n    timeout: 800ms", "interval: 1s\n    timeout: 2s", 1)
    )
    status, body = await fetch(server, "/-/reload", "POST")
    assert status == 400
    assert "services.website.timeout: must be shorter than interval" in body
    _, text = await fetch(server, "/metrics")
    assert value(text, "sla_exporter_config_last_reload_successful") == 0
    before = exporter.store.services["website"].probes
    await eventually(lambda: _more(exporter, "website", before))  # still probing the old config
    _, page = await fetch(server, "/")
    assert "The last reload failed" in page
    config.write_text(good)
    assert await fetch(server, "/-/reload", "POST") == (200, "Reloaded.\n")
    _, text = await fetch(server, "/metrics")
    assert value(text, "sla_exporter_config_last_reload_successful") == 1


async def test_a_burst_of_reloads_runs_at_most_two_and_answers_every_client(running) -> None:
    # 200 POST /-/reload used to run 84 full reloads one after the other. One runs, one waits
    # behind it for every request made meanwhile.
    exporter, server, _, _ = running
    async with ClientSession() as session:

        async def post() -> int:
            async with session.post(server.make_url("/-/reload")) as resp:
                return resp.status

        # A reload "running" (its lock held) while the burst arrives, as a slow one would be.
        async with exporter._reload_lock:
            posts = asyncio.gather(*(post() for _ in range(50)))

            async def all_queued() -> bool:
                await asyncio.sleep(0.01)
                return len(exporter._queued_for) == 50

            await eventually(all_queued)
        statuses = await asyncio.wait_for(posts, 30)
    assert statuses == [200] * 50
    assert exporter.reloads == 1


async def test_reloads_asked_for_by_clients_that_left_are_not_run(running) -> None:
    # Fire and forget: each client sends its POST and hangs up at once. A reload already
    # running finishes; the one queued behind it is dropped when nobody waits for it any more.
    exporter, server, _, _ = running
    request = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    for _ in range(50):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        await writer.drain()
        writer.transport.abort()

    async def settled() -> bool:
        await asyncio.sleep(0.2)
        return not exporter._reloading and not exporter._reload_lock.locked()

    await eventually(settled)
    assert exporter.reloads <= 2
    assert await exporter.reload() is None  # and a reload asked for now still runs
    assert exporter.reloads <= 3


async def _more(exporter: Exporter, name: str, than: int) -> bool:
    return exporter.store.services[name].probes > than


async def test_a_service_removed_by_reload_disappears_from_metrics(running) -> None:
    exporter, server, config, _ = running
    await eventually(lambda: _probed(exporter))
    config.write_text(config.read_text().split("  refused:")[0])
    assert await exporter.reload() is None
    _, text = await fetch(server, "/metrics")
    assert 'sla_service="refused"' not in text
    assert 'sla_service="website"' in text


async def test_secrets_never_reach_metrics_the_landing_page_or_logs(
    running, caplog: pytest.LogCaptureFixture
) -> None:
    exporter, server, _, target = running
    caplog.set_level(logging.DEBUG)
    await eventually(lambda: _probed(exporter))
    target.up = False  # the website's error page quotes the token: it must not travel on

    async def website_down() -> bool:
        last = exporter.store.services["website"].last
        return last is not None and not last.success

    await eventually(website_down)
    for path in ("/metrics", "/", "/-/ready"):
        _, body = await fetch(server, path)
        assert SECRET not in body, path
    assert SECRET not in caplog.text
    assert all(
        SECRET not in r.message for s in exporter.store.services.values() for r in s.recent_failures
    )


async def test_the_landing_page_lists_each_service_with_its_last_result(running) -> None:
    exporter, server, _, _ = running
    await eventually(lambda: _probed(exporter))
    status, page = await fetch(server, "/")
    assert status == 200
    for name in ("website", "api", "refused"):
        assert f"<td>{name}</td>" in page
    assert "<b>connect</b>" in page  # the reason of the refused service's failures


async def test_the_landing_page_shows_each_distinct_failure_once_with_its_count(running) -> None:
    exporter, server, _, _ = running
    state = exporter.store.services["refused"]

    async def three_failures() -> bool:
        return len(state.recent_failures) >= 3

    await eventually(three_failures)
    _, page = await fetch(server, "/")
    # The refused service fails the same way every time: one line with its count, not many.
    assert page.count("<li><b>connect</b>") == 1
    count = int(page.split('<span class="count">&times;')[1].split("<")[0])
    assert count >= 3
    assert exporter.config is not None
    assert f"Times in {exporter.config.sla.timezone}." in page


async def test_the_landing_page_links_the_status_page_and_what_it_is_given(
    running,
) -> None:
    exporter, _, _, _ = running
    app = make_app(exporter)
    app[LINKS_KEY] = [("Prometheus", "http://127.0.0.1:9090/classic/alerts")]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        status, page = await fetch(server, "/")
        linked, _ = await fetch(server, "/status")  # the link is not a dead one
    finally:
        await server.close()
    assert status == 200
    assert '<a href="http://127.0.0.1:9090/classic/alerts">Prometheus</a>' in page
    assert '<a href="/metrics">Metrics</a>' in page
    assert '<a href="/status">Status page</a>' in page
    assert linked == 200


async def test_health_readiness_and_no_endpoint_that_probes_a_given_target(running) -> None:
    _, server, _, _ = running
    assert await fetch(server, "/-/healthy") == (200, "Healthy.\n")
    assert await fetch(server, "/-/ready") == (200, "Ready.\n")
    status, _ = await fetch(server, "/probe?target=http://127.0.0.1:9141/&module=http")
    assert status == 404
    status, _ = await fetch(server, "/-/reload")  # GET must not reload
    assert status == 405


async def test_probes_in_a_maintenance_window_are_counted_apart(running) -> None:
    exporter, server, config, _ = running
    config.write_text(
        config.read_text() + "maintenance:\n  - services: [refused]\n"
        "    start: 2020-01-01T00:00:00Z\n    end: 2099-01-01T00:00:00Z\n"
    )
    assert await exporter.reload() is None
    state = exporter.store.services["refused"]
    before = state.maintenance_probes
    await eventually(lambda: _maintenance_probes(exporter, before + 2))
    _, text = await fetch(server, "/metrics")
    assert value(text, "sla_maintenance", sla_service="refused") == 1
    assert value(text, "sla_maintenance", sla_service="website") == 0
    assert value(text, "sla_maintenance_probe_failures_total", sla_service="refused") == (
        state.maintenance_failures
    )
    assert value(text, "sla_maintenance_window_end_timestamp_seconds", sla_service="refused") == (
        4070908800.0
    )


async def _maintenance_probes(exporter: Exporter, at_least: int) -> bool:
    return exporter.store.services["refused"].maintenance_probes >= at_least


async def test_month_tallies_are_exposed_and_written_to_disk(running, tmp_path: Path) -> None:
    exporter, server, _, _ = running
    await eventually(lambda: _probed(exporter))
    _, text = await fetch(server, "/metrics")
    months = [s for s in samples(text) if s[0] == "sla_month_seconds"]
    assert {dict(labels)["state"] for _, labels in months} == {
        "up",
        "down",
        "unknown",
        "excluded",
        "maintenance",
        "unmonitored",
    }
    await exporter.stop()
    assert (tmp_path / "ledger.json").exists()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_basic_auth_from_the_web_config_guards_every_endpoint(running) -> None:
    import bcrypt

    exporter, _, _, _ = running
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(4)).decode()
    web_config = WebConfig.model_validate({"basic_auth_users": {"prometheus": hashed}})
    server = TestServer(make_app(exporter, web_config), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            for path in ("/metrics", "/", "/-/healthy"):
                async with session.get(server.make_url(path)) as resp:
                    assert resp.status == 401
            wrong = {"Authorization": basic("prometheus", "nope")}
            async with session.get(server.make_url("/metrics"), headers=wrong) as resp:
                assert resp.status == 401
            garbled = {"Authorization": "Basic !!!"}
            async with session.get(server.make_url("/metrics"), headers=garbled) as resp:
                assert resp.status == 401
            right = {"Authorization": basic("prometheus", "scrape-pass")}
            for _ in range(2):  # the second time from the cache of verified pairs
                async with session.get(server.make_url("/metrics"), headers=right) as resp:
                    assert resp.status == 200
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def guarded(exporter: Exporter, cost: int) -> AsyncIterator[TestServer]:
    """The web app with one basic auth user, "prometheus", whose hash has bcrypt cost `cost`."""
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(cost)).decode()
    web_config = WebConfig.model_validate({"basic_auth_users": {"prometheus": hashed}})
    server = TestServer(make_app(exporter, web_config), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def timed_get(session: ClientSession, url: URL, auth: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with session.get(url, headers={"Authorization": auth}) as resp:
        return resp.status, time.perf_counter() - started


async def test_an_unknown_user_costs_as_much_as_a_wrong_password(running) -> None:
    # An unknown user was answered in 2 ms, a known one with a wrong password in 63 ms: the
    # user names could be enumerated. Both now cost one bcrypt check of the same cost.
    exporter, _, _, _ = running
    async with guarded(exporter, 10) as server, ClientSession() as session:
        url = server.make_url("/metrics")
        unknown, known = [], []
        for _ in range(4):  # 8 failures: under the limit on failed logins
            status, took = await timed_get(session, url, basic("nobody", "guess"))
            unknown.append(took)
            assert status == 401
            status, took = await timed_get(session, url, basic("prometheus", "guess"))
            known.append(took)
            assert status == 401
    assert statistics.median(unknown) > 0.5 * statistics.median(known)


async def test_a_password_flood_does_not_hold_up_the_event_loop(running) -> None:
    # bcrypt ran on the event loop: 32 clients guessing delayed every probe by 50-250 ms.
    exporter, _, _, _ = running
    lags: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:  # how late a 5 ms sleep wakes up is how long the loop was held
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    async with guarded(exporter, 12) as server, ClientSession() as session:
        url = server.make_url("/metrics")
        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(
            *(timed_get(session, url, basic("prometheus", f"guess-{i}")) for i in range(8))
        )
        done.set()
        await watcher
    assert [status for status, _ in answers] == [401] * 8
    assert max(lags) < 0.15  # a cost-12 check takes ~0.25 s; none of them ran on the loop


async def test_an_address_that_keeps_failing_is_answered_429_without_a_check(running) -> None:
    exporter, _, _, _ = running
    async with guarded(exporter, 4) as server, ClientSession() as session:
        url = server.make_url("/metrics")
        for _ in range(web_module.MAX_FAILURES):
            assert (await timed_get(session, url, basic("prometheus", "guess")))[0] == 401
        status, _ = await timed_get(session, url, basic("prometheus", "scrape-pass"))
        async with session.get(url, headers={"Authorization": basic("x", "y")}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) > 0
    assert status == 429  # the right password too, until the window has passed


async def test_openmetrics_gzip_and_name_filters_serve_the_same_samples(running) -> None:
    """/metrics writes the services' series itself (collector.py): every format Prometheus may
    ask for must carry exactly the samples of the text format, and parse under the strict
    OpenMetrics parser."""
    exporter, server, _, _ = running
    await eventually(lambda: _probed(exporter))
    await exporter.scheduler.stop()  # the figures hold still between the requests below
    url = server.make_url("/metrics")
    async with ClientSession() as session:
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            text = await resp.text()
        openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8"
        async with session.get(url, headers={"Accept": openmetrics}) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            om_text = await resp.text()
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            gzipped = await resp.text()  # aiohttp decompresses
        filtered_url = url.with_query([("name[]", "sla_probe_success"), ("name[]", "sla_info")])
        async with session.get(filtered_url) as resp:
            filtered = await resp.text()

    def ours(families: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict:
        return {k: v for k, v in families.items() if k[0].startswith("sla_")}

    plain = ours(samples(text))
    assert len(plain) > 50
    assert ours(samples(gzipped)) == plain
    om: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in openmetrics_families(om_text):  # raises on anything OpenMetrics forbids
        for sample in family.samples:
            om[(sample.name, frozenset(sample.labels.items()))] = sample.value
    # OpenMetrics names info series `_info` and counters `_total` as the text format does.
    assert ours(om) == plain
    assert om_text.endswith("# EOF\n")
    kept = {name for name, _ in ours(samples(filtered))}
    assert kept == {"sla_probe_success", "sla_info"}


async def test_metrics_is_sent_in_chunks_and_a_head_request_gets_the_headers_alone(
    running,
) -> None:
    """/metrics is sent family by family as it is written (web.py), so without a length."""
    _, server, _, _ = running
    url = server.make_url("/metrics")
    async with ClientSession() as session:
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert "sla_info{" in await resp.text()
        async with session.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert await resp.read() == b""
