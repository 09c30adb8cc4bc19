"""The http probe kind: one request or a short flow of steps, checked for status and body."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from pydantic import SecretStr

from .. import __version__
from ..config import TLS, Expect, HTTPProbe, HTTPStep, Text
from ..secrets import reveal
from .base import ProbeFailed, Reason, Trace, bounded, certificate_expiry, network_failure

USER_AGENT = f"sla-exporter/{__version__}"
_SHOWN_URL = 80  # characters of a URL kept in messages, so the verdict after it survives `bounded`
_SHOWN_VALUE = 60  # characters of a configured or received value quoted in a message
_AUTH_HEADERS = ("authorization", "proxy-authorization")

# --------------------------------------------------------------------------------------------
# Requests and responses


@dataclass(frozen=True)
class Request:
    """One HTTP request as it goes on the wire (secrets already revealed) and how to name it."""

    method: str
    url: str
    label: str  # "step 2 GET https://host/path", the start of every message about this request
    headers: Mapping[str, str]
    data: str | Mapping[str, str] | None = None  # a str body, or form fields sent urlencoded
    json: Any = None
    follow_redirects: bool = True
    credentials: bool = False  # whether a 401/403 means "login refused" rather than a bad status
    secrets: frozenset[str] = frozenset()  # masked out of server text quoted in messages

    def quote(self, text: str, limit: int = _SHOWN_VALUE) -> str:
        """Server-sent `text` fit for a message: secrets masked first, then cut to `limit`."""
        return bounded(mask(text, self.secrets), limit)


@dataclass(frozen=True)
class Response:
    """A response with its body read up to max_body_bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    charset: str | None
    too_large: int | None = None  # bytes known to exist when the body exceeded the limit

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")


def describe(method: str, url: str, step: int | None = None) -> str:
    """How messages name a request: method and URL without query (tokens live there), shortened."""
    shown, query, _ = url.partition("#")[0].partition("?")
    if query:
        shown += "?…"
    if len(shown) > _SHOWN_URL:
        shown = shown[: _SHOWN_URL - 1] + "…"
    return f"{'' if step is None else f'step {step} '}{method} {shown}"


def wire_headers(*layers: Mapping[str, Text]) -> dict[str, str]:
    """Merge header layers case-insensitively (later wins), reveal secrets, add our User-Agent."""
    merged: dict[str, tuple[str, str]] = {"user-agent": ("User-Agent", USER_AGENT)}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, reveal(value) or "")
    return dict(merged.values())


def secret_values(*values: object) -> set[str]:
    """Every SecretStr value inside `values` (through mappings and lists), revealed."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, Mapping):
            found |= secret_values(*value.values())
        elif isinstance(value, list | tuple):
            found |= secret_values(*value)
    found.discard("")
    return found


def mask(text: str, secrets: Collection[str]) -> str:
    """`text` with every secret (and its URL-encoded forms) replaced by ***."""
    forms = {form for s in secrets for form in (s, quote(s, safe=""), quote_plus(s))}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


@contextlib.contextmanager
def failures(trace: Trace, secrets: Collection[str]) -> Iterator[None]:
    """Turn every expected failure into ProbeFailed, with secrets masked out of its message.

    Library errors are classified here rather than in the runner because only the probe knows the
    secrets a server may have echoed back into an error text.
    """
    try:
        yield
    except ProbeFailed as failure:
        raise ProbeFailed(
            failure.reason, mask(failure.message, secrets), failure.status_code
        ) from failure
    except Exception as exc:
        known = classify(exc, trace)
        if known is None:
            raise
        raise ProbeFailed(known.reason, mask(known.message, secrets), known.status_code) from exc


# --------------------------------------------------------------------------------------------
# The client


# The TLS connections a Client starts are reported to it through this variable: the SSL contexts
# are shared between probes (loading the system CA store takes ~20 ms of event-loop time), and
# aiohttp opens connections in the task of the caller, whose context carries the variable.
_tls_observer: ContextVar[Callable[[ssl.SSLObject], None] | None] = ContextVar(
    "tls_observer", default=None
)


class _TracingContext(ssl.SSLContext):
    """An SSLContext that tells the current Client about every TLS connection it starts.

    asyncio calls wrap_bio when it builds the TLS protocol for a socket aiohttp has already
    connected (aiohttp >= 3.10 connects with aiohappyeyeballs, then hands the socket over), so the
    call marks the end of TCP connect and the start of the handshake: the one split between
    `connect` and `tls` that aiohttp's trace signals do not give.
    """

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        observer = _tls_observer.get()
        if observer is not None:
            observer(sslobj)
        return sslobj


@functools.lru_cache(maxsize=32)
def _cached_context(verify: bool, ca_file: str | None, _stamp: object) -> _TracingContext:
    context = _TracingContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()  # what ssl.create_default_context() does
    return context


def ssl_context(tls: TLS) -> ssl.SSLContext:
    """The (shared) client context for `tls`; a CA file is reloaded when it changes on disk."""
    stamp = None
    if tls.verify and tls.ca_file is not None:
        try:
            stat = os.stat(tls.ca_file)
        except OSError as err:
            raise ProbeFailed(Reason.TLS, f"cannot read tls.ca_file: {err.strerror}") from err
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return _cached_context(tls.verify, tls.ca_file if tls.verify else None, stamp)


_Hook = Callable[[aiohttp.ClientSession, SimpleNamespace, Any], Coroutine[Any, Any, None]]


def _hook(action: Callable[[], None]) -> _Hook:
    async def hook(session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
        action()

    return hook


class Client:
    """One aiohttp session for one probe run: fresh connections, one cookie jar, phases traced.

    Phases go to `trace` as they happen, so a timeout names the phase it cut off:
      connect     request start to TCP connected (DNS excluded; includes a redirect's hop)
      dns         host name resolution (absent for IP literals)
      tls         handshake, from the socket being connected to the TLS session being up
      first_byte  connection up to response headers; writing the request is part of it, since
                  aiohttp signals "headers sent" but nothing at the end of a streamed body
      transfer    reading the body (and checking it)
    Several requests (steps, redirects, a test SMS) add to the same phase names.
    """

    def __init__(self, trace: Trace, tls: TLS, max_body_bytes: int) -> None:
        self._trace = trace
        self._max_body_bytes = max_body_bytes
        self._server_name = tls.server_name
        self._ssl = ssl_context(tls)
        self._tls_started: list[ssl.SSLObject] = []
        self._observing: Token[Callable[[ssl.SSLObject], None] | None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._observing = _tls_observer.set(self._tls_start)
        tracing = aiohttp.TraceConfig()
        enter = self._trace.enter
        tracing.on_request_start.append(_hook(lambda: enter("connect")))
        tracing.on_request_redirect.append(_hook(lambda: enter("connect")))
        tracing.on_connection_create_start.append(_hook(lambda: enter("connect")))
        tracing.on_dns_resolvehost_start.append(_hook(lambda: enter("dns")))
        tracing.on_dns_resolvehost_end.append(_hook(lambda: enter("connect")))
        tracing.on_connection_create_end.append(_hook(self._connected))
        self._session = aiohttp.ClientSession(
            # force_close: a new connection for every request and nothing pooled past this
            # probe, so a kept-alive connection cannot hide a failing connect or handshake.
            connector=aiohttp.TCPConnector(force_close=True, use_dns_cache=False),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: keep cookies of IP hosts too
            trace_configs=[tracing],
            timeout=aiohttp.ClientTimeout(total=None),  # the runner's deadline is the only one
        )
        # aiohttp (>= 3.10) resends an idempotent request once when the connection drops before
        # the response; a probe must report that drop, not hide it behind a second connection.
        # There is no public switch, hence the private attribute.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            if self._observing is not None:
                _tls_observer.reset(self._observing)

    def _tls_start(self, sslobj: ssl.SSLObject) -> None:
        self._trace.enter("tls")
        self._tls_started.append(sslobj)

    def _connected(self) -> None:
        while self._tls_started:
            expiry = certificate_expiry(self._tls_started.pop())
            if expiry is not None:
                self._trace.saw_certificate(expiry)
        self._trace.enter("first_byte")

    async def fetch(self, request: Request) -> Response:
        """Send `request` and read its body, stopping one byte past max_body_bytes."""
        assert self._session is not None, "use Client as an async context manager"
        async with self._session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.data,
            json=request.json,
            allow_redirects=request.follow_redirects,
            ssl=self._ssl,
            server_hostname=self._server_name,
        ) as resp:
            self._trace.enter("transfer")
            self._trace.status_code = resp.status
            limit = self._max_body_bytes
            # A HEAD response declares the length of a body it does not send.
            declared = resp.content_length if request.method != "HEAD" else None
            if declared is not None and declared > limit:
                return Response(resp.status, resp.headers, b"", resp.charset, too_large=declared)
            body = bytearray()
            while chunk := await resp.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    # Leaving the block closes the connection: the rest is never read.
                    return Response(
                        resp.status, resp.headers, b"", resp.charset, too_large=len(body)
                    )
            return Response(resp.status, resp.headers, bytes(body), resp.charset)


# --------------------------------------------------------------------------------------------
# Checks


def _statuses(expect: Expect) -> str:
    return "2xx" if expect.status is None else ", ".join(str(s) for s in expect.status)


def check_status(
    response: Response, expect: Expect, request: Request, detail: str | None = None
) -> None:
    """Fail unless the status is expected (any 2xx by default); `detail` is added to the message."""
    status = response.status
    expected = 200 <= status < 300 if expect.status is None else status in expect.status
    if expected:
        return
    extra = f": {request.quote(detail)}" if detail else ""
    if status == 429:
        retry = response.headers.get("Retry-After")
        after = f", retry after {request.quote(retry, 30)}" if retry else ""
        raise ProbeFailed(
            Reason.RATE_LIMITED, f"{request.label}: rate limited (status 429{after}){extra}", status
        )
    if status in (401, 403) and request.credentials:
        raise ProbeFailed(
            Reason.AUTH, f"{request.label}: status {status}, credentials refused{extra}", status
        )
    raise ProbeFailed(
        Reason.HTTP_STATUS,
        f"{request.label}: status {status}, expected {_statuses(expect)}{extra}",
        status,
    )


def _show(value: Any, request: Request | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return request.quote(text) if request is not None else bounded(text, _SHOWN_VALUE)


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual  # true is not 1
    return bool(expected == actual)


def json_mismatch(
    expected: Mapping[str, Any], actual: Any, request: Request | None = None, path: str = ""
) -> str | None:
    """Where `actual` differs from the subset `expected` (nested mappings compared key by key)."""
    if not isinstance(actual, dict):
        kind = "an array" if isinstance(actual, list) else _show(actual, request)
        return f"JSON {'body' if not path else f'field {path}'} is {kind}, expected an object"
    for key, want in expected.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in actual:
            return f"JSON field {where} is missing"
        got = actual[key]
        if isinstance(want, Mapping):
            found = json_mismatch(want, got, request, where)
            if found is not None:
                return found
        elif not _same(want, got):
            return f"JSON field {where} is {_show(got, request)}, expected {_show(want)}"
    return None


def parse_json(response: Response) -> tuple[bool, Any]:
    """(True, value) when the body is JSON, else (False, None)."""
    try:
        return True, json.loads(response.body)
    except (ValueError, RecursionError):
        return False, None


def check_body(response: Response, expect: Expect, request: Request) -> None:
    """Fail when the body is too large or misses a substring, regex or JSON fields."""
    label, status = request.label, response.status
    if response.too_large is not None:
        raise ProbeFailed(
            Reason.BODY_TOO_LARGE,
            f"{label}: body of at least {response.too_large} bytes exceeds max_body_bytes",
            status,
        )
    if expect.body_contains is not None or expect.body_regex is not None:
        text = response.text()
        if expect.body_contains is not None and expect.body_contains not in text:
            raise ProbeFailed(
                Reason.BODY_MISMATCH,
                f"{label}: body does not contain {_show(expect.body_contains)}",
                status,
            )
        if expect.body_regex is not None and not re.search(expect.body_regex, text):
            raise ProbeFailed(
                Reason.BODY_MISMATCH,
                f"{label}: body does not match /{bounded(expect.body_regex, _SHOWN_VALUE)}/",
                status,
            )
    if expect.json_ is not None:
        ok, value = parse_json(response)
        if not ok:
            raise ProbeFailed(Reason.BODY_MISMATCH, f"{label}: body is not JSON", status)
        mismatch = json_mismatch(expect.json_, value, request)
        if mismatch is not None:
            raise ProbeFailed(Reason.BODY_MISMATCH, f"{label}: {mismatch}", status)


# --------------------------------------------------------------------------------------------
# The probe


def _has_credentials(step: HTTPStep) -> bool:
    if any(name.lower() in _AUTH_HEADERS for name in step.headers):
        return True
    return bool(secret_values(step.headers, step.body, step.form))


def _request(
    step: HTTPStep, number: int | None, credentials: bool, secrets: frozenset[str]
) -> Request:
    data: str | dict[str, str] | None = None
    if step.form is not None:
        data = {name: reveal(value) or "" for name, value in step.form.items()}
    elif step.body is not None:
        data = reveal(step.body)
    return Request(
        method=step.method,
        url=step.url,
        label=describe(step.method, step.url, number),
        headers=wire_headers(step.headers),
        data=data,
        follow_redirects=bool(step.follow_redirects),
        credentials=credentials,
        secrets=secrets,
    )


async def probe(config: HTTPProbe, trace: Trace) -> str:
    """Make the request (or every step in order, sharing cookies) and check each response."""
    steps = config.flow()
    secrets = frozenset(secret_values([(s.headers, s.body, s.form) for s in steps]))
    with failures(trace, secrets):
        async with Client(trace, config.tls, config.max_body_bytes) as client:
            # After a step that logged in, the session cookie is the credential: a 401/403
            # later in the flow is a refused login too, not just an unexpected status.
            credentials = False
            for number, step in enumerate(steps, start=1):
                credentials = credentials or _has_credentials(step)
                number_shown = number if len(steps) > 1 else None
                request = _request(step, number_shown, credentials, secrets)
                response = await client.fetch(request)
                check_status(response, step.expect, request)
                check_body(response, step.expect, request)
    done = f"{len(steps)} steps, last " if len(steps) > 1 else ""
    return f"{done}{request.label}: status {response.status}, {len(response.body)} bytes"


def classify(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    """Map aiohttp's errors to reasons; socket-level errors go to the shared network_failure."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # DNS, refused, unreachable, and TLS (certificate and handshake errors are subclasses).
        cause = exc.os_error
        if isinstance(cause, socket.gaierror):
            return ProbeFailed(Reason.DNS, f"cannot resolve {exc.host}: {cause.strerror or cause}")
        return network_failure(cause, trace)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {trace.phase}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        detail = str(exc).split(".")[0].split(":")[0]
        return ProbeFailed(Reason.PROTOCOL, f"broken response body ({detail}) during {trace.phase}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        last = exc.history[-1].status if exc.history else None
        return ProbeFailed(Reason.HTTP_STATUS, f"too many redirects (last status {last})", last)
    if isinstance(exc, aiohttp.ClientResponseError | HttpProcessingError):
        return ProbeFailed(Reason.PROTOCOL, f"invalid HTTP response: {exc.message}")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return ProbeFailed(Reason.PROTOCOL, f"redirected to an unusable URL: {exc}")
    if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, OSError):
        return ProbeFailed(Reason.PROTOCOL, f"connection lost during {trace.phase}")
    return network_failure(exc, trace)
