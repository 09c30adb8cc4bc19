"""The sms_gateway probe against a fake gateway on loopback that records every request it gets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from http_servers import raw_server, read_request, serve
from pydantic import SecretStr

from sla_exporter.probes import sms_gateway
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.sms_gateway import SMSGatewayProbe

TOKEN = "tok-9f8e7d"


async def check(config: dict[str, Any], timeout: float = 2.0) -> ProbeResult:
    return await run_probe(sms_gateway.probe, SMSGatewayProbe.model_validate(config), timeout)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any = None


@dataclass
class Gateway:
    """A fake SMS gateway: /balance answers `status_reply`, /send answers `send_reply`."""

    status_reply: tuple[int, Any] = (200, {"status": "ok", "balance": 12.5})
    send_reply: tuple[int, Any] = (200, {"id": "msg-1", "status": "queued"})
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        async def balance(request: web.Request) -> web.Response:
            self.seen.append(
                Seen(request.method, request.path, request.headers.get("Authorization"))
            )
            status, payload = self.status_reply
            return web.json_response(payload, status=status)

        async def send(request: web.Request) -> web.Response:
            body = await request.json()
            self.seen.append(Seen("POST", request.path, request.headers.get("Authorization"), body))
            status, payload = self.send_reply
            return web.json_response(payload, status=status)

        app = web.Application()
        app.add_routes([web.get("/balance", balance), web.post("/send", send)])
        return app


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": f"{url}/balance", "token": SecretStr(TOKEN), **extra}


async def test_a_gateway_that_reports_ok_is_a_success_showing_its_balance() -> None:
    gateway = Gateway()
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.success, result.message
    assert result.message == f"GET {url}/balance: status 200, balance 12.5"
    assert gateway.seen == [Seen("GET", "/balance", f"Bearer {TOKEN}")]
    assert {"connect", "first_byte", "transfer"} <= set(result.phases)


async def test_the_token_goes_in_the_configured_header_with_the_configured_prefix() -> None:
    headers: list[str | None] = []

    async def balance(request: web.Request) -> web.Response:
        headers.append(request.headers.get("X-Auth-Token"))
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes([web.get("/balance", balance)])
    async with serve(app) as url:
        result = await check(config(url, token_header="X-Auth-Token", token_prefix=""))
    assert result.success, result.message
    assert headers == [TOKEN]


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ({"error": "Insufficient balance"}, "Insufficient balance"),
        ({"error": {"code": 17, "message": "Account suspended"}}, "Account suspended"),
        ({"success": False, "message": "Sender ID not approved"}, "Sender ID not approved"),
        ({"success": False}, "success is false"),
        ({"status": "FAILED", "description": "Route unavailable"}, "Route unavailable"),
        ({"status": "error"}, 'status "error"'),
        ({"errors": [{"message": "Quota exceeded"}, "x"]}, "Quota exceeded (and 1 more)"),
    ],
)
async def test_a_200_carrying_an_error_payload_is_a_gateway_error_quoting_the_gateway(
    payload: dict[str, Any], text: str
) -> None:
    gateway = Gateway(status_reply=(200, payload))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.GATEWAY_ERROR
    assert result.message == f"GET {url}/balance: gateway error: {text}"
    assert result.status_code == 200


@pytest.mark.parametrize(
    "payload",
    [{"error": None}, {"error": ""}, {"errors": []}, {"success": True}, {"status": "ok"}, [1, 2]],
)
async def test_payloads_that_only_look_like_errors_are_not_failures(payload: Any) -> None:
    gateway = Gateway(status_reply=(200, payload))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.success, result.message


async def test_a_long_gateway_error_is_cut_short() -> None:
    gateway = Gateway(status_reply=(200, {"error": "E" * 10_000}))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.GATEWAY_ERROR
    assert len(result.message) <= 200


async def test_a_throttled_gateway_fails_with_rate_limited() -> None:
    gateway = Gateway(status_reply=(429, {"error": "Too many requests"}))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.RATE_LIMITED
    assert result.message == f"GET {url}/balance: rate limited (status 429): Too many requests"
    assert result.status_code == 429


async def test_a_refused_token_is_an_auth_failure_that_never_shows_the_token() -> None:
    gateway = Gateway(status_reply=(401, {"error": f"invalid token {TOKEN}"}))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.AUTH
    assert TOKEN not in result.message
    assert result.message.endswith("status 401, credentials refused: invalid token ***")


async def test_a_server_error_is_an_http_status_failure() -> None:
    gateway = Gateway(status_reply=(502, "upstream down"))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.HTTP_STATUS
    assert result.message == f"GET {url}/balance: status 502, expected 2xx"


async def test_expect_applies_as_for_http() -> None:
    gateway = Gateway()
    async with serve(gateway.app()) as url:
        result = await check(config(url, expect={"json": {"status": "active"}}))
    assert result.reason == Reason.BODY_MISMATCH
    assert result.message.endswith('JSON field status is "ok", expected "active"')


async def test_a_gateway_that_hangs_times_out() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async with raw_server(hang) as server:
        result = await check(config(server.url), timeout=0.5)
    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during first_byte"


async def test_no_sms_is_sent_unless_send_test_is_enabled() -> None:
    gateway = Gateway()
    async with serve(gateway.app()) as url:
        absent = await check(config(url))
        disabled = await check(
            config(url, send_test={"enabled": False, "url": f"{url}/send", "to": "+41790000000"})
        )
    assert absent.success and disabled.success
    assert [s.path for s in gateway.seen] == ["/balance", "/balance"]


async def test_an_enabled_send_test_posts_exactly_one_sms_with_the_token() -> None:
    gateway = Gateway()
    async with serve(gateway.app()) as url:
        result = await check(
            config(
                url,
                send_test={
                    "enabled": True,
                    "url": f"{url}/send",
                    "to": "+41790000000",
                    "text": "SLA probe 1",
                },
            )
        )
    assert result.success, result.message
    assert result.message.endswith("; test SMS accepted (status 200)")
    assert gateway.seen == [
        Seen("GET", "/balance", f"Bearer {TOKEN}"),
        Seen("POST", "/send", f"Bearer {TOKEN}", {"to": "+41790000000", "text": "SLA probe 1"}),
    ]


async def test_a_rejected_test_sms_is_a_gateway_error_naming_the_send() -> None:
    gateway = Gateway(send_reply=(200, {"success": False, "message": "Invalid number"}))
    async with serve(gateway.app()) as url:
        result = await check(
            config(url, send_test={"enabled": True, "url": f"{url}/send", "to": "+0"})
        )
    assert result.reason == Reason.GATEWAY_ERROR
    assert result.message == f"send test POST {url}/send: gateway error: Invalid number"


async def test_no_sms_is_sent_when_the_status_check_fails() -> None:
    gateway = Gateway(status_reply=(200, {"status": "error", "message": "maintenance"}))
    async with serve(gateway.app()) as url:
        result = await check(
            config(url, send_test={"enabled": True, "url": f"{url}/send", "to": "+41790000000"})
        )
    assert result.reason == Reason.GATEWAY_ERROR
    assert [s.path for s in gateway.seen] == ["/balance"]


async def test_a_token_straddling_the_length_limit_is_masked_before_the_cut() -> None:
    gateway = Gateway(status_reply=(200, {"error": "x" * 100 + TOKEN + "y" * 100}))
    async with serve(gateway.app()) as url:
        result = await check(config(url))
    assert result.reason == Reason.GATEWAY_ERROR
    assert TOKEN[:4] not in result.message
    assert "***" in result.message
