"""The http probe against real servers on loopback: each way a site can fail, and its reason."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from conftest import server_context
from cryptography import x509
from http_servers import raw_server, read_request, reset, serve
from pydantic import SecretStr

from sla_exporter import __version__
from sla_exporter.probes import http
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.http import HTTPProbe
from tests.helpers import free_port as unused_port


async def check(config: dict[str, Any], timeout: float = 2.0) -> ProbeResult:
    return await run_probe(http.probe, HTTPProbe.model_validate(config), timeout)


def not_after(cert: trustme.LeafCert) -> float:
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def app_with(*routes: web.RouteDef) -> web.Application:
    app = web.Application()
    app.add_routes(list(routes))
    return app


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="all good")


# --------------------------------------------------------------------------------------------
# Answers


async def test_a_server_that_answers_200_is_a_success_with_every_phase_timed() -> None:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="all good")

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": url.replace("127.0.0.1", "localhost") + "/"})
    assert result.success, result.message
    assert result.status_code == 200
    assert "status 200, 8 bytes" in result.message
    assert {"dns", "connect", "first_byte", "transfer"} <= set(result.phases)
    assert "tls" not in result.phases
    assert seen[0].headers["User-Agent"] == f"sla-exporter/{__version__}"


async def test_method_headers_and_form_go_on_the_wire_and_a_configured_user_agent_wins() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.update(
            method=request.method,
            agent=request.headers.getall("User-Agent"),
            token=request.headers["X-Token"],
            form=dict(await request.post()),
        )
        return web.Response(status=201)

    async with serve(app_with(web.put("/things", handler))) as url:
        result = await check(
            {
                "url": f"{url}/things",
                "method": "PUT",
                "headers": {"user-agent": "custom/1", "X-Token": SecretStr("t0k3n")},
                "form": {"name": "probe", "password": SecretStr("pa ss")},
                "expect": {"status": [201]},
            }
        )
    assert result.success, result.message
    assert seen == {
        "method": "PUT",
        "agent": ["custom/1"],
        "token": "t0k3n",
        "form": {"name": "probe", "password": "pa ss"},
    }


async def test_a_raw_body_is_sent_as_configured() -> None:
    bodies: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.text())
        return web.Response()

    async with serve(app_with(web.post("/", handler))) as url:
        result = await check({"url": f"{url}/", "method": "POST", "body": '{"ping": 1}'})
    assert result.success, result.message
    assert bodies == ['{"ping": 1}']


async def test_a_server_that_returns_500_fails_with_http_status() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/"})
    assert result.reason == Reason.HTTP_STATUS
    assert result.message == f"GET {url}/: status 500, expected 2xx"
    assert result.status_code == 500


async def test_a_status_outside_the_configured_list_names_the_list() -> None:
    async with serve(app_with(web.get("/", ok))) as url:
        result = await check({"url": f"{url}/", "expect": {"status": [204, 304]}})
    assert result.reason == Reason.HTTP_STATUS
    assert result.message.endswith("status 200, expected 204, 304")


async def test_a_server_that_throttles_the_probe_fails_with_rate_limited() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "30"})

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/"})
    assert result.reason == Reason.RATE_LIMITED
    assert "rate limited (status 429, retry after 30)" in result.message
    assert result.status_code == 429


async def test_a_401_to_a_request_with_credentials_is_an_auth_failure() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401)

    async with serve(app_with(web.get("/", handler))) as url:
        with_token = await check(
            {"url": f"{url}/", "headers": {"Authorization": SecretStr("Bearer abc")}}
        )
        anonymous = await check({"url": f"{url}/"})
    assert with_token.reason == Reason.AUTH
    assert "status 401, credentials refused" in with_token.message
    assert anonymous.reason == Reason.HTTP_STATUS


# --------------------------------------------------------------------------------------------
# Bodies


async def test_a_200_with_the_wrong_body_fails_with_body_mismatch() -> None:
    async with serve(app_with(web.get("/", ok))) as url:
        result = await check({"url": f"{url}/", "expect": {"body_contains": "welcome"}})
    assert result.reason == Reason.BODY_MISMATCH
    assert result.message == f'GET {url}/: body does not contain "welcome"'
    assert result.status_code == 200


async def test_a_body_regex_must_match_somewhere_in_the_body() -> None:
    async with serve(app_with(web.get("/", ok))) as url:
        matching = await check({"url": f"{url}/", "expect": {"body_regex": r"all\s+go+d"}})
        missing = await check({"url": f"{url}/", "expect": {"body_regex": r"^bad"}})
    assert matching.success, matching.message
    assert missing.reason == Reason.BODY_MISMATCH
    assert missing.message.endswith("body does not match /^bad/")


async def test_a_body_regex_that_backtracks_without_end_gives_up_after_its_time_limit() -> None:
    # (a|aa)+c tries every way of splitting the a's before it can say "no c": on 36 of them,
    # seconds of matching (re: ~5 s here), all of it holding the event loop and every probe.
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="a" * 36)

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/", "expect": {"body_regex": "(a|aa)+c"}})
    assert result.reason == Reason.BODY_MISMATCH
    assert result.message == (
        f"GET {url}/: body_regex /(a|aa)+c/ gave up after 100 ms on 36 characters "
        "(it backtracks too much on this body)"
    )
    assert result.status_code == 200


async def test_json_fields_are_compared_as_a_subset_including_nested_objects() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "version": 3, "db": {"up": True, "lag": 0}, "extra": [1]}
        )

    async with serve(app_with(web.get("/", handler))) as url:
        subset = await check(
            {"url": f"{url}/", "expect": {"json": {"status": "ok", "db": {"up": True}}}}
        )
        nested = await check({"url": f"{url}/", "expect": {"json": {"db": {"up": False}}}})
        missing = await check({"url": f"{url}/", "expect": {"json": {"db": {"primary": 1}}}})
        not_bool = await check({"url": f"{url}/", "expect": {"json": {"db": {"up": 1}}}})
    assert subset.success, subset.message
    assert nested.reason == Reason.BODY_MISMATCH
    assert nested.message.endswith("JSON field db.up is true, expected false")
    assert missing.message.endswith("JSON field db.primary is missing")
    assert not_bool.reason == Reason.BODY_MISMATCH


async def test_a_body_that_is_not_json_fails_a_json_check() -> None:
    async with serve(app_with(web.get("/", ok))) as url:
        result = await check({"url": f"{url}/", "expect": {"json": {"status": "ok"}}})
    assert result.reason == Reason.BODY_MISMATCH
    assert result.message.endswith("body is not JSON")


async def test_an_endless_body_fails_with_body_too_large_without_buffering_it() -> None:
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        chunk = b"x" * 65536
        while sent < 1 << 30:
            await response.write(chunk)
            sent += len(chunk)
        return response

    async with serve(app_with(web.get("/", handler))) as url:
        tracemalloc.start()
        try:
            result = await check({"url": f"{url}/", "max_body_bytes": 4096})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.reason == Reason.BODY_TOO_LARGE
    assert "body of at least 4097 bytes exceeds max_body_bytes" in result.message
    # The server stops once socket buffers fill; the probe itself holds ~max_body_bytes.
    assert peak < 8 << 20
    assert sent < 64 << 20


async def test_a_declared_content_length_over_the_limit_fails_before_reading() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 << 30)})
        await response.prepare(request)
        await response.write(b"x" * 1024)
        await asyncio.sleep(10)  # a reader would wait here for the rest of the 10 GiB
        return response

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/", "max_body_bytes": 4096}, timeout=1)
    assert result.reason == Reason.BODY_TOO_LARGE
    assert f"body of at least {10 << 30} bytes" in result.message


async def test_a_head_request_is_not_judged_by_the_length_it_declares() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100_000)

    async with serve(app_with(web.get("/", big))) as url:
        head = await check({"url": f"{url}/", "method": "HEAD", "max_body_bytes": 4096})
        get = await check({"url": f"{url}/", "max_body_bytes": 4096})
    assert head.success, head.message
    assert get.reason == Reason.BODY_TOO_LARGE


# --------------------------------------------------------------------------------------------
# Connections that misbehave


async def test_a_server_that_hangs_after_accepting_costs_one_timeout_naming_the_phase() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async with raw_server(hang) as server:
        started = time.perf_counter()
        result = await check({"url": f"{server.url}/"}, timeout=0.5)
    assert time.perf_counter() - started < 1.5
    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during first_byte"
    assert "first_byte" in result.phases


async def test_a_body_dripped_slower_than_the_timeout_times_out_during_transfer() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b"x")
            await asyncio.sleep(0.05)
        return response

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/"}, timeout=0.5)
    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during transfer"
    assert result.status_code == 200


async def test_a_connection_reset_is_a_protocol_failure_and_is_not_retried() -> None:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        reset(writer)

    async with raw_server(rst) as server:
        result = await check({"url": f"{server.url}/"})
    assert result.reason == Reason.PROTOCOL
    assert "reset by peer during first_byte" in result.message
    assert server.connections == 1


async def test_a_server_that_answers_garbage_is_a_protocol_failure() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()

    async with raw_server(garbage) as server:
        result = await check({"url": f"{server.url}/"})
    assert result.reason == Reason.PROTOCOL
    assert result.message.startswith("invalid HTTP response")


async def test_a_server_that_closes_before_answering_is_a_protocol_failure() -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(close) as server:
        result = await check({"url": f"{server.url}/"})
    assert result.reason == Reason.PROTOCOL
    assert result.message == "server closed the connection during first_byte"
    assert server.connections == 1


async def test_a_body_cut_short_of_its_content_length_is_a_protocol_failure() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await writer.drain()

    async with raw_server(short) as server:
        result = await check({"url": f"{server.url}/"})
    assert result.reason == Reason.PROTOCOL
    assert result.message == (
        "broken response body (not enough data to satisfy content length header "
        "(received 10 of 100 bytes)) during transfer"
    )


async def test_a_tls_handshake_that_never_completes_times_out_during_tls() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()  # reads no ClientHello, answers nothing

    async with raw_server(silent) as server:
        url = server.url.replace("http://", "https://")
        result = await check({"url": f"{url}/"}, timeout=0.5)
    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during tls"


async def test_a_refused_connection_fails_with_connect() -> None:
    result = await check({"url": f"http://127.0.0.1:{unused_port()}/"})
    assert result.reason == Reason.CONNECT
    assert result.message == "connection refused"


async def test_an_unresolvable_host_fails_with_dns() -> None:
    result = await check({"url": "http://sla-probe.invalid/"})
    assert result.reason == Reason.DNS
    assert result.message.startswith("cannot resolve sla-probe.invalid")


async def test_each_probe_opens_a_fresh_connection() -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # answers any number of requests on one connection, if the client lets it
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=60\r\n\r\nok"
            )
            await writer.drain()

    async with raw_server(keep_alive) as server:
        first = await check({"url": f"{server.url}/"})
        second = await check({"url": f"{server.url}/"})
    assert first.success and second.success
    assert server.connections == 2


# --------------------------------------------------------------------------------------------
# TLS


async def test_a_valid_certificate_from_the_configured_ca_succeeds_and_reports_its_expiry(
    localhost_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(localhost_cert)) as url:
        result = await check({"url": f"{url}/", "tls": {"ca_file": ca_file}})
    assert url.startswith("https://")
    assert result.success, result.message
    assert result.tls_expiry == pytest.approx(not_after(localhost_cert), abs=1)
    assert {"connect", "tls", "first_byte", "transfer"} <= set(result.phases)


async def test_a_ca_file_replaced_on_disk_is_read_again(
    localhost_cert: trustme.LeafCert, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))  # some other CA
    async with serve(app_with(web.get("/", ok)), ssl=server_context(localhost_cert)) as url:
        config = HTTPProbe.model_validate({"url": f"{url}/", "tls": {"ca_file": str(path)}})
        before = await run_probe(http.probe, config, 2)
        path.write_bytes(Path(ca_file).read_bytes() + b"\n")
        after = await run_probe(http.probe, config, 2)
        path.unlink()  # the config was checked when loaded; the file went away since
        gone = await run_probe(http.probe, config, 2)
    assert before.reason == Reason.TLS
    assert after.success, after.message
    assert gone.reason == Reason.TLS
    assert gone.message == "cannot read tls.ca_file: No such file or directory"


async def test_an_expired_certificate_fails_with_tls(
    expired_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(expired_cert)) as url:
        result = await check({"url": f"{url}/", "tls": {"ca_file": ca_file}})
    assert result.reason == Reason.TLS
    assert result.message == "certificate rejected: certificate has expired"
    assert "tls" in result.phases


async def test_a_certificate_from_an_untrusted_ca_fails_with_tls(
    self_signed_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(self_signed_cert)) as url:
        result = await check({"url": f"{url}/", "tls": {"ca_file": ca_file}})
    assert result.reason == Reason.TLS
    assert result.message.startswith("certificate rejected: unable to get local issuer")


async def test_a_certificate_for_another_host_fails_with_tls(
    wrong_host_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(wrong_host_cert)) as url:
        by_name = await check(
            {"url": url.replace("127.0.0.1", "localhost") + "/", "tls": {"ca_file": ca_file}}
        )
        by_address = await check({"url": f"{url}/", "tls": {"ca_file": ca_file}})
    assert by_name.reason == Reason.TLS
    assert by_name.message == (
        "certificate rejected: Hostname mismatch, certificate is not valid for 'localhost'."
    )
    assert by_address.reason == Reason.TLS
    assert by_address.message.startswith("certificate rejected: IP address mismatch")


async def test_server_name_checks_the_certificate_against_that_name_instead(
    wrong_host_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(wrong_host_cert)) as url:
        result = await check(
            {"url": f"{url}/", "tls": {"ca_file": ca_file, "server_name": "not-this-host.example"}}
        )
    assert result.success, result.message


async def test_verification_off_accepts_an_untrusted_certificate_and_still_reads_its_expiry(
    self_signed_cert: trustme.LeafCert,
) -> None:
    async with serve(app_with(web.get("/", ok)), ssl=server_context(self_signed_cert)) as url:
        result = await check({"url": f"{url}/", "tls": {"verify": False}})
    assert result.success, result.message
    assert result.tls_expiry == pytest.approx(not_after(self_signed_cert), abs=1)


# --------------------------------------------------------------------------------------------
# Redirects and flows


def redirecting_app() -> web.Application:
    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound("/final")

    async def final(request: web.Request) -> web.Response:
        return web.Response(text="arrived")

    return app_with(web.get("/start", start), web.get("/final", final))


async def test_redirects_are_followed_by_default() -> None:
    async with serve(redirecting_app()) as url:
        result = await check({"url": f"{url}/start", "expect": {"body_contains": "arrived"}})
    assert result.success, result.message
    assert result.status_code == 200


async def test_a_redirect_not_followed_is_judged_by_its_own_status() -> None:
    async with serve(redirecting_app()) as url:
        unexpected = await check({"url": f"{url}/start", "follow_redirects": False})
        expected = await check(
            {"url": f"{url}/start", "follow_redirects": False, "expect": {"status": [302]}}
        )
    assert unexpected.reason == Reason.HTTP_STATUS
    assert unexpected.message == f"GET {url}/start: status 302, expected 2xx"
    assert expected.success, expected.message


async def test_a_redirect_loop_fails_with_http_status() -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async with serve(app_with(web.get("/loop", loop))) as url:
        result = await check({"url": f"{url}/loop"})
    assert result.reason == Reason.HTTP_STATUS
    assert result.message == "too many redirects (last status 302)"


async def test_a_redirect_to_another_scheme_is_a_protocol_failure() -> None:
    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://files.example/")

    async with serve(app_with(web.get("/", away))) as url:
        result = await check({"url": f"{url}/"})
    assert result.reason == Reason.PROTOCOL
    assert result.message.startswith("redirected to an unusable URL")


def elsewhere_app(seen: list[dict[str, str]]) -> web.Application:
    """The other host a redirect leads to: records the headers it was sent."""

    async def landing(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="landed elsewhere")

    return app_with(web.get("/landing", landing))


def redirect_to(target: str) -> web.Application:
    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    return app_with(web.get("/start", start))


# Configured headers: four credentials (by value or by name) and two that are not.
SECRET_HEADERS = {
    "Authorization": SecretStr("Bearer auth-secret-1"),
    "X-Api-Key": SecretStr("api-key-secret-2"),
    "Cookie": "session=cookie-secret-3",
    "X-Tenant": SecretStr("tenant-secret-4"),  # a custom header holding a secret
}
PLAIN_HEADERS = {"Accept": "application/json", "X-Probe-Run": "sla"}


@pytest.mark.parametrize("other", ["localhost", "127.0.0.1"])  # another host, another port
async def test_no_credential_header_follows_a_redirect_to_another_origin(other: str) -> None:
    # Only Authorization used to be dropped: X-Api-Key, Cookie and a custom token header
    # reached the other host.
    seen: list[dict[str, str]] = []
    async with serve(elsewhere_app(seen)) as elsewhere:
        target = elsewhere.replace("127.0.0.1", other) + "/landing"
        async with serve(redirect_to(target)) as url:
            result = await check(
                {"url": f"{url}/start", "headers": {**SECRET_HEADERS, **PLAIN_HEADERS}}
            )
    assert result.success, result.message
    [headers] = seen
    sent = "\n".join(f"{name}: {value}" for name, value in headers.items())
    for secret in ("auth-secret-1", "api-key-secret-2", "cookie-secret-3", "tenant-secret-4"):
        assert secret not in sent
    assert headers["X-Probe-Run"] == "sla" and headers["Accept"] == "application/json"


async def test_credential_headers_follow_a_redirect_within_the_same_origin() -> None:
    seen: list[dict[str, str]] = []

    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound("/landing")

    async def landing(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="here")

    async with serve(app_with(web.get("/start", start), web.get("/landing", landing))) as url:
        result = await check({"url": f"{url}/start", "headers": SECRET_HEADERS})
    assert result.success, result.message
    assert seen[0]["X-Api-Key"] == "api-key-secret-2"
    assert seen[0]["Authorization"] == "Bearer auth-secret-1"


@pytest.mark.parametrize(
    ("policy", "other", "followed"),
    [
        ("any", "localhost", True),
        (True, "localhost", True),
        ("same_host", "127.0.0.1", True),  # same host, another port
        ("same_host", "localhost", False),
        ("none", "127.0.0.1", False),
        (False, "127.0.0.1", False),
    ],
)
async def test_the_redirect_policy_decides_which_redirects_are_followed(
    policy: str | bool, other: str, followed: bool
) -> None:
    seen: list[dict[str, str]] = []
    async with serve(elsewhere_app(seen)) as elsewhere:
        target = elsewhere.replace("127.0.0.1", other) + "/landing"
        async with serve(redirect_to(target)) as url:
            expect = {"status": [200, 302]}
            result = await check(
                {"url": f"{url}/start", "follow_redirects": policy, "expect": expect}
            )
    assert result.success, result.message
    assert result.status_code == (200 if followed else 302)
    assert len(seen) == (1 if followed else 0)


def login_app() -> web.Application:
    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("password") != "hunter2":
            return web.Response(status=200, text="try again")
        response = web.Response(text="welcome")
        response.set_cookie("session", "s-123")
        return response

    async def dashboard(request: web.Request) -> web.Response:
        if request.cookies.get("session") != "s-123":
            raise web.HTTPFound("/login")
        return web.Response(text="your dashboard")

    return app_with(web.post("/login", login), web.get("/dashboard", dashboard))


def login_flow(url: str, password: str) -> dict[str, Any]:
    return {
        "follow_redirects": False,
        "steps": [
            {
                "url": f"{url}/login",
                "method": "POST",
                "form": {"user": "probe", "password": SecretStr(password)},
            },
            {
                "url": f"{url}/dashboard",
                "expect": {"status": [200], "body_contains": "dashboard"},
            },
        ],
    }


async def test_a_login_flow_carries_the_session_cookie_to_the_next_step() -> None:
    async with serve(login_app()) as url:
        result = await check(login_flow(url, "hunter2"))
    assert result.success, result.message
    assert result.message.startswith("2 steps, last step 2 GET")


async def test_a_failed_login_names_the_step_where_the_flow_broke() -> None:
    async with serve(login_app()) as url:
        result = await check(login_flow(url, "wrong-password"))
    assert result.reason == Reason.HTTP_STATUS
    assert result.message == f"step 2 GET {url}/dashboard: status 302, expected 200"


async def test_every_step_opens_its_own_connection() -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(keep_alive) as server:
        result = await check({"steps": [{"url": f"{server.url}/a"}, {"url": f"{server.url}/b"}]})
    assert result.success, result.message
    assert server.connections == 2


# --------------------------------------------------------------------------------------------
# Secrets


async def test_a_secret_echoed_by_the_server_never_reaches_the_message() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"user": request.headers["X-Api-Key"]})

    async with serve(app_with(web.get("/", echo))) as url:
        result = await check(
            {
                "url": f"{url}/",
                "headers": {"X-Api-Key": SecretStr("k3y-s3cr3t")},
                "expect": {"json": {"user": "alice"}},
            }
        )
    assert result.reason == Reason.BODY_MISMATCH
    assert "k3y-s3cr3t" not in result.message
    assert result.message.endswith('JSON field user is "***", expected "alice"')


async def test_a_probes_requests_are_worked_out_once_and_forgotten_with_its_config() -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Api-Key"])
        return web.json_response({"user": request.headers["X-Api-Key"]})

    config = HTTPProbe.model_validate(
        {
            "url": "http://127.0.0.1:9/",
            "headers": {"X-Api-Key": SecretStr("k3y-s3cr3t")},
            "expect": {"json": {"user": "alice"}},
        }
    )
    async with serve(app_with(web.get("/", echo))) as url:
        config = config.model_copy(update={"url": f"{url}/"})
        first, second = [await run_probe(http.probe, config, 2) for _ in range(2)]
        plan = http._plan(config)
        assert http._plan(config) is plan  # the runs above made it; this one reuses it
    # Every run sends the secret and keeps it out of the message, the plan's first or not.
    assert seen == ["k3y-s3cr3t", "k3y-s3cr3t"]
    assert first.message == second.message
    assert second.message.endswith('JSON field user is "***", expected "alice"')
    key = id(config)
    del config, plan
    gc.collect()
    assert key not in http._plans  # a reloaded config does not leave its plan behind


async def test_a_query_string_is_left_out_of_messages() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async with serve(app_with(web.get("/", handler))) as url:
        result = await check({"url": f"{url}/?api_key=plain-token"})
    assert result.reason == Reason.HTTP_STATUS
    assert "plain-token" not in result.message
    assert result.message == f"GET {url}/?…: status 503, expected 2xx"
