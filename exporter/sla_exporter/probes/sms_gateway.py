"""The sms_gateway probe kind: an HTTP API check that also reads the gateway's own error payload."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, StrictBool, StrictInt

from ..values import TLS, URL, HeaderName, Headers, InHeader, Model
from .base import Kind, ProbeFailed, Reason, Trace, bounded
from .http import (
    Client,
    Expect,
    Request,
    Response,
    check_body,
    check_status,
    describe,
    failures,
    parse_json,
    secret_values,
    wire_headers,
)

__all__ = ["KIND", "SMSGatewayProbe", "SMSSendTest", "gateway_error", "probe"]

# --------------------------------------------------------------------------------------------
# Config: the `sms_gateway:` section of a service


class SMSSendTest(Model):
    """A real test SMS: costs money, so it is sent only when `enabled` is true."""

    enabled: StrictBool = False
    url: URL
    to: str = Field(min_length=1)
    text: str = "SLA probe"


class SMSGatewayProbe(Model):
    url: URL
    method: Literal["GET", "POST"] = "GET"
    token: Annotated[SecretStr, InHeader] | None = None
    token_header: HeaderName = "Authorization"
    token_prefix: Annotated[str, InHeader] = "Bearer "
    headers: Headers = {}
    expect: Expect = Expect()
    send_test: SMSSendTest | None = None
    tls: TLS = TLS()
    max_body_bytes: StrictInt = Field(default=1 << 20, ge=1024, le=64 << 20)


_ERROR_TEXT = 120  # characters of the gateway's own error text kept in a message
_FAILED_STATUSES = ("error", "failed", "fail")
_TEXT_KEYS = ("message", "error_message", "description", "detail", "error", "reason", "code")


def _text(value: Any) -> str:
    """Readable text from an error value: a string, a {"message": ...} object, or a list of them."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in _TEXT_KEYS:
            if value.get(key) not in (None, "", [], {}):
                return _text(value[key])
    if isinstance(value, list) and value:
        more = f" (and {len(value) - 1} more)" if len(value) > 1 else ""
        return _text(value[0]) + more
    return json.dumps(value, ensure_ascii=False, default=str)


def gateway_error(payload: Any) -> str | None:
    """The error a gateway reports in its JSON payload, whatever the HTTP status, or None.

    Recognised shapes: {"error": <non-empty>}, {"success": false}, {"status": "error" | "failed" |
    "fail"} and {"errors": [<non-empty>]}, each with the text found beside it when there is one.
    """
    if not isinstance(payload, Mapping):
        return None
    error = payload.get("error")
    if error not in (None, False, "", [], {}):
        return "error" if error is True else _text(error)
    errors = payload.get("errors")
    if isinstance(errors, list) and errors:
        return _text(errors)
    status = payload.get("status")
    failed = isinstance(status, str) and status.lower() in _FAILED_STATUSES
    if payload.get("success") is False or failed:
        detail = _text(payload) if any(payload.get(k) for k in _TEXT_KEYS) else None
        return detail or (f'status "{status}"' if failed else "success is false")
    return None


def _check(response: Response, expect: Expect, request: Request) -> None:
    _, payload = parse_json(response)
    error = gateway_error(payload)
    # A status outside `expect` (429, 401 ...) wins over the payload, which then only adds text.
    check_status(response, expect, request, detail=error)
    if error is not None:
        raise ProbeFailed(
            Reason.GATEWAY_ERROR,
            f"{request.label}: gateway error: {request.quote(error, _ERROR_TEXT)}",
            response.status,
        )
    check_body(response, expect, request)


def _balance(response: Response) -> str:
    _, payload = parse_json(response)
    if isinstance(payload, Mapping):
        balance = payload.get("balance")
        if isinstance(balance, int | float | str) and not isinstance(balance, bool):
            return f", balance {bounded(str(balance), 30)}"
    return ""


async def probe(config: SMSGatewayProbe, trace: Trace) -> str:
    """Check the status endpoint; send a test SMS only when send_test.enabled is true."""
    token = {}
    if config.token is not None:
        token = {config.token_header: config.token_prefix + config.token.get_secret_value()}
    headers = wire_headers(config.headers, token)
    secrets = frozenset(secret_values(config.headers, config.token))
    credentials = bool(token) or bool(secrets)
    send = config.send_test if config.send_test is not None and config.send_test.enabled else None
    with failures(trace, secrets):
        async with Client(trace, config.tls, config.max_body_bytes) as client:
            status = Request(
                method=config.method,
                url=config.url,
                label=describe(config.method, config.url),
                headers=headers,
                credentials=credentials,
                secrets=secrets,
            )
            response = await client.fetch(status)
            _check(response, config.expect, status)
            message = f"{status.label}: status {response.status}{_balance(response)}"
            if send is not None:
                test = Request(
                    method="POST",
                    url=send.url,
                    label="send test " + describe("POST", send.url),
                    headers=headers,
                    json={"to": send.to, "text": send.text},
                    credentials=credentials,
                    secrets=secrets,
                )
                response = await client.fetch(test)
                _check(response, Expect(), test)
                message += f"; test SMS accepted (status {response.status})"
    return message


KIND = Kind("sms_gateway", SMSGatewayProbe, probe)
