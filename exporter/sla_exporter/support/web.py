"""`POST /api/v1/support/events`: a helpdesk's ticket events, stored before they are acknowledged.

Answers, all JSON:
- 200 `{"stored": n, "duplicates": m}`: every event is in the database (committed).
- 400 `{"errors": [...]}`: not JSON, or an event breaks a rule; each error names the field
  (`[3].time: must be ...`). Nothing of the request was stored.
- 401: no `Authorization: Bearer <token>`, or the wrong token.
- 404: the SLA file has no `support:` section.
- 409 `{"errors": [...]}`: an event id already stored for a different event; nothing stored.
- 413: the body is larger than `support.max_body_bytes`.
- 503: the database failed (disk full, ...); nothing acknowledged, so the sender retries.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from ..values import reveal
from .desk import SupportDesk, SupportUnavailable
from .events import BadEvents, parse_json, validate_events
from .store import Conflict

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/support/events"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status)


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right.
    given = given.strip()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


async def _body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def events_handler(desk: SupportDesk, clock: Callable[[], float] = time.time) -> Handler:
    """The handler of EVENTS_PATH for `desk`."""

    async def post_events(request: web.Request) -> web.Response:
        config = desk.config
        if config is None or not desk.enabled:
            return _answer(404, error="support is not configured in the SLA file")
        token = reveal(config.token) or ""
        if not _authorized(request.headers.get(hdrs.AUTHORIZATION, ""), token):
            desk.rejected["401"] += 1
            response = _answer(401, error="missing or wrong token (Authorization: Bearer ...)")
            response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="sla-exporter"'
            return response
        raw = await _body(request, config.max_body_bytes)
        if raw is None:
            desk.rejected["413"] += 1
            return _answer(
                413,
                error=f"the body is larger than {config.max_body_bytes} bytes; send fewer "
                "events per request",
            )
        try:
            events = validate_events(parse_json(raw), clock())
        except BadEvents as bad:
            desk.rejected["400"] += 1
            return _answer(400, errors=bad.errors)
        try:
            result = await desk.ingest(events)
        except Conflict as conflict:
            desk.rejected["409"] += 1
            return _answer(409, errors=conflict.errors)
        except (sqlite3.Error, OSError, SupportUnavailable) as err:
            log.error("support: cannot store %d events: %s", len(events), err)
            return _answer(503, error="the events could not be stored; send them again later")
        return _answer(200, stored=result.stored, duplicates=result.duplicates)

    return post_events
