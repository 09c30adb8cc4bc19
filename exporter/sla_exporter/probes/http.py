"""The http probe kind: one request or a short flow of steps, checked for status and body.

Requests go through aiohttp's client (connections, TLS, HTTP/1.1 framing, decoding, cookies,
proxies); what is the probe's own is around it: the phases (its tracing signals and the shared
SSL context, tls.py), the redirect policy and what crosses origins, the bounded body read, the
checks, and turning every error into a reason with no secret in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import socket
import ssl
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextvars import Token
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Literal
from urllib.parse import quote, quote_plus

import aiohttp
import regex
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import (
    Field,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from .. import __version__
from ..values import (
    TLS,
    Headers,
    HTTPStatus,
    Method,
    Model,
    Regex,
    Text,
    custom,
    reveal,
    show,
)
from ..values import URL as URLValue
from .base import Kind, ProbeFailed, Reason, Trace, bounded, certificate_expiry, network_failure
from .tls import HandshakeObserver, client_context, start_observing, stop_observing

USER_AGENT = f"sla-exporter/{__version__}"
_SHOWN_URL = 80  # characters of a URL kept in messages, so the verdict after it survives `bounded`
_SHOWN_VALUE = 60  # characters of a configured or received value quoted in a message
_AUTH_HEADERS = ("authorization", "proxy-authorization")

# --------------------------------------------------------------------------------------------
# Config: the `http:` section of a service


class Expect(Model):
    """What a response must look like; every check given must pass."""

    status: list[HTTPStatus] | None = Field(default=None, min_length=1)
    body_contains: str | None = None
    body_regex: Regex | None = None
    json_: dict[str, Any] | None = Field(default=None, alias="json")

    def accepts_status(self, status: int) -> bool:
        """Whether `status` is expected: one of `status`, or any 2xx when that is not set."""
        return status in self.status if self.status is not None else 200 <= status <= 299


# Which redirects a request follows: none (the redirect itself is the answer checked), those
# to the same host (http to https included), or any. `true` and `false` stay for any and none.
RedirectPolicy = Literal["none", "same_host", "any"]
REDIRECT_POLICIES: tuple[RedirectPolicy, ...] = ("none", "same_host", "any")


def _redirects(value: Any) -> RedirectPolicy:
    if value is True:
        return "any"
    if value is False:
        return "none"
    for policy in REDIRECT_POLICIES:
        if value == policy:
            return policy
    raise custom(
        "redirects",
        f"must be one of none, same_host, any (or true for any, false for none), got {show(value)}",
    )


Redirects = Annotated[RedirectPolicy, PlainValidator(_redirects)]


def _proxy_url(value: Any) -> str | SecretStr:
    if not isinstance(value, str | SecretStr):
        raise custom("proxy_url", f"must be an http:// or https:// proxy URL, got {show(value)}")
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    try:
        parsed = URL(raw)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise custom(
            "proxy_url", f"must be an http:// or https:// proxy URL with a host, got {show(value)}"
        )
    if (parsed.raw_user or parsed.raw_password) and not isinstance(value, SecretStr):
        # The value is not shown: it holds the password.
        raise custom(
            "proxy_url",
            "must not hold credentials (user:password@) in the file; put the whole URL in a "
            "secret with !env or !file",
        )
    return value


# An HTTP(S) proxy; a secret (`!env`, `!file`) when it carries credentials.
ProxyURL = Annotated[str | SecretStr, PlainValidator(_proxy_url)]
IPProtocol = Literal["ip4", "ip6"]
# Content codings a probe can require (aiohttp decodes them; br with the Brotli library).
Compression = Literal["gzip", "deflate", "br", "identity"]


def _accepts(accept_encoding: str, coding: str) -> bool:
    """Whether an Accept-Encoding value lets the server send `coding` (RFC 9110 12.5.3)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            key, _, number = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        if name:
            weights[name.lower()] = weight
    if coding in weights:
        return weights[coding] > 0
    if "*" in weights:
        return weights["*"] > 0
    return coding == "identity"  # identity is acceptable unless refused by name or by *


def _body_or_form(body: Any, info: ValidationInfo) -> None:
    if body is not None and info.data.get("body") is not None:
        raise custom("body_form", "cannot be set together with body; use one or the other")


class HTTPStep(Model):
    url: URLValue
    method: Method = "GET"
    headers: Headers = {}
    body: Text | None = None
    form: dict[str, Text] | None = None
    follow_redirects: Redirects | None = None
    expect: Expect = Expect()

    @field_validator("form")
    @classmethod
    def _one_body(cls, form: Any, info: ValidationInfo) -> Any:
        _body_or_form(form, info)
        return form


# Keys that describe the single request; with `steps` they belong on each step instead.
_REQUEST_KEYS = ("method", "body", "form", "expect")


class HTTPProbe(Model):
    """One request (`url` and friends) or a short flow of `steps` sharing one cookie jar."""

    url: URLValue | None = None
    method: Method = "GET"
    headers: Headers = {}
    body: Text | None = None
    form: dict[str, Text] | None = None
    expect: Expect = Expect()
    steps: list[HTTPStep] | None = Field(default=None, min_length=1, max_length=10)
    follow_redirects: Redirects = "any"
    tls: TLS = TLS()
    max_body_bytes: StrictInt = Field(default=1 << 20, ge=1024, le=64 << 20)
    proxy_url: ProxyURL | None = None
    proxy_from_environment: StrictBool = False
    preferred_ip_protocol: IPProtocol | None = None
    ip_protocol_fallback: StrictBool = True
    compression: Compression | None = None

    @field_validator("form")
    @classmethod
    def _one_body(cls, form: Any, info: ValidationInfo) -> Any:
        _body_or_form(form, info)
        return form

    @model_validator(mode="after")
    def _route(self) -> HTTPProbe:
        if self.proxy_from_environment and self.proxy_url is not None:
            raise custom(
                "proxy",
                "cannot be used together with proxy_url; use one or the other",
                field="proxy_from_environment",
            )
        if "ip_protocol_fallback" in self.model_fields_set and self.preferred_ip_protocol is None:
            raise custom(
                "ip_protocol",
                "needs preferred_ip_protocol (ip4 or ip6): without it every address is tried",
                field="ip_protocol_fallback",
            )
        if self.compression is not None:
            for headers in [self.headers, *(step.headers for step in self.steps or [])]:
                for name, value in headers.items():
                    shown = reveal(value) or ""
                    if name.lower() == "accept-encoding" and not _accepts(shown, self.compression):
                        raise custom(
                            "compression",
                            f'needs an Accept-Encoding header that accepts "{self.compression}", '
                            f"got {show(value)}",
                            field="compression",
                        )
        return self

    @model_validator(mode="after")
    def _url_or_steps(self) -> HTTPProbe:
        if self.url is None and self.steps is None:
            raise custom("url_or_steps", "must set url (one request) or steps (a flow)")
        if self.url is not None and self.steps is not None:
            raise custom(
                "url_or_steps",
                "cannot be used together with url; use url for one request or steps for a flow",
                field="steps",
            )
        if self.steps is not None:
            for key in _REQUEST_KEYS:
                if key in self.model_fields_set:
                    raise custom(
                        "url_or_steps", "belongs on each step when steps are used", field=key
                    )
        return self

    def flow(self) -> list[HTTPStep]:
        """The requests this probe makes, in order; `headers` apply to every step."""
        if self.steps is None:
            assert self.url is not None
            steps = [
                HTTPStep(
                    url=self.url,
                    method=self.method,
                    body=self.body,
                    form=self.form,
                    expect=self.expect,
                )
            ]
        else:
            steps = self.steps
        return [
            s.model_copy(
                update={
                    "headers": {**self.headers, **s.headers},
                    "follow_redirects": (
                        self.follow_redirects if s.follow_redirects is None else s.follow_redirects
                    ),
                }
            )
            for s in steps
        ]


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
    follow_redirects: RedirectPolicy = "any"
    credentials: bool = False  # whether a 401/403 means "login refused" rather than a bad status
    secrets: frozenset[str] = frozenset()  # masked out of server text quoted in messages
    compression: Compression | None = None  # the Content-Encoding the response must have

    def quote(self, text: str, limit: int = _SHOWN_VALUE) -> str:
        """Server-sent `text` fit for a message: secrets masked first, then cut to `limit`."""
        return bounded(mask(text, self.secrets), limit)


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
        known = _library_failure(exc, trace)
        if known is None:
            raise
        raise ProbeFailed(known.reason, mask(known.message, secrets), known.status_code) from exc


# --------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class Response:
    """A response with its body read (and decoded) up to max_body_bytes."""

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

    @property
    def content_encoding(self) -> str:
        """The response's Content-Encoding, lower case; "identity" when it has none."""
        return self.headers.get("Content-Encoding", "").strip().lower() or "identity"


REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10  # the 10th redirect in a row fails the probe, as with aiohttp's own limit
_DEFAULT_PORTS = {"http": 80, "https": 443}
# No deadline of aiohttp's own (its default is 5 minutes): the runner's timeout is the only one,
# and it names the phase it cut off.
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)

_FAMILIES: dict[IPProtocol, socket.AddressFamily] = {
    "ip4": socket.AF_INET,
    "ip6": socket.AF_INET6,
}


@dataclass(frozen=True)
class Route:
    """How a probe's requests reach the server: a proxy, and which IP family to connect over."""

    proxy: str | None = None  # an http:// or https:// proxy URL, credentials revealed
    proxy_from_environment: bool = False  # HTTP_PROXY, HTTPS_PROXY, NO_PROXY when proxy is None
    preferred_ip_protocol: IPProtocol | None = None  # None: every address, Happy Eyeballs
    ip_protocol_fallback: bool = True  # use the other family when the name has none of this one

    def proxy_for(self, url: URL) -> str | None:
        """The proxy a request to `url` goes through, if any."""
        if self.proxy is not None or not self.proxy_from_environment:
            return self.proxy
        # The standard library's reading of the usual variables (what aiohttp's trust_env reads
        # too, in a thread per request, with ~/.netrc: a file read the probe does not need).
        proxies = urllib.request.getproxies_environment()
        host = url.raw_host
        # proxy_bypass_environment reads NO_PROXY; it is in every CPython, not in typeshed.
        if host is None or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
            return None
        return proxies.get(url.scheme)


class _FamilyResolver(AbstractResolver):
    """aiohttp's resolver, keeping the addresses of one IP family when the name has any, as
    blackbox_exporter's preferred_ip_protocol and ip_protocol_fallback do."""

    def __init__(self, preferred: IPProtocol, fallback: bool) -> None:
        self._resolver = DefaultResolver()
        self._preferred = preferred
        self._family = _FAMILIES[preferred]
        self._fallback = fallback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        wanted = [address for address in found if address["family"] == self._family]
        if wanted:
            return wanted
        if self._fallback:
            return found
        version = "IPv4" if self._preferred == "ip4" else "IPv6"
        raise socket.gaierror(
            socket.EAI_NONAME, f"no {version} address (ip_protocol_fallback is false)"
        )

    async def close(self) -> None:
        await self._resolver.close()


# One connector per event loop and IP family policy, shared by every probe on that loop: it
# pools nothing (force_close: each request has its own connection, closed after its response,
# so a kept-alive connection cannot hide a failing connect or handshake) and so holds no state
# between probes; what it saves is building it, its resolver and its bookkeeping per probe.
_connectors: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[IPProtocol | None, bool], aiohttp.TCPConnector]
] = weakref.WeakKeyDictionary()


def _connector(route: Route) -> aiohttp.TCPConnector:
    per_loop = _connectors.setdefault(asyncio.get_running_loop(), {})
    key = (route.preferred_ip_protocol, route.ip_protocol_fallback)
    connector = per_loop.get(key)
    if connector is None or connector.closed:
        resolver = None
        if route.preferred_ip_protocol is not None:
            resolver = _FamilyResolver(route.preferred_ip_protocol, route.ip_protocol_fallback)
        connector = aiohttp.TCPConnector(
            force_close=True,
            limit=0,  # the scheduler's concurrency cap is the only one
            use_dns_cache=False,  # every probe resolves the name, as a new visitor would
            resolver=resolver,
        )
        per_loop[key] = connector
    return connector


def _on(phase: str) -> Callable[[aiohttp.ClientSession, SimpleNamespace, Any], Awaitable[None]]:
    async def hook(session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
        trace: Trace = context.trace_request_ctx
        trace.enter(phase)

    return hook


# The phases from aiohttp's tracing signals; the trace of each request is its trace_request_ctx.
# The TLS handshake happens inside aiohttp's connection creation, between the signals: its start
# (TCP connected) is seen by the shared SSL context (tls.py), which asyncio's and uvloop's TLS
# transports call to build each connection's TLS object.
_TRACING = aiohttp.TraceConfig()
_TRACING.on_request_start.append(_on("connect"))
_TRACING.on_dns_resolvehost_start.append(_on("dns"))
_TRACING.on_dns_resolvehost_end.append(_on("connect"))
_TRACING.on_connection_create_end.append(_on("first_byte"))
_TRACING.freeze()


class Client:
    """One probe run's HTTP client: aiohttp's, with a fresh connection per request, one cookie
    jar for the run, and the phases traced.

    Phases go to `trace` as they happen, so a timeout names the phase it cut off:
      connect     request start to TCP connected (DNS excluded; includes a redirect's hop and,
                  through a proxy, connecting to it and its answer to CONNECT)
      dns         host name resolution (absent for IP literals)
      tls         handshake, from the socket being connected to the TLS session being up
      first_byte  connection up to response headers, writing the request included
      transfer    reading the body (and decoding it)
    Several requests (steps, redirects, a test SMS) add to the same phase names.
    """

    def __init__(self, trace: Trace, tls: TLS, max_body_bytes: int, route: Route = Route()) -> None:
        self._trace = trace
        self._max_body_bytes = max_body_bytes
        self._tls = tls
        self._route = route
        self._observing: Token[HandshakeObserver | None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._observing = start_observing(self)
        self._session = aiohttp.ClientSession(
            connector=_connector(self._route),
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: keep cookies of IP hosts too
            trace_configs=[_TRACING],
            timeout=_NO_TIMEOUT,
        )
        # aiohttp resends an idempotent request once when its connection drops before the
        # response (RFC 9112 9.3.1, meant for kept-alive connections); a probe must report that
        # drop, not hide it behind a second connection. There is no public switch.
        self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            if self._observing is not None:
                stop_observing(self._observing)

    def tls_started(self, tls: ssl.SSLObject) -> None:
        self._trace.enter("tls")

    def tls_done(self, tls: ssl.SSLObject) -> None:
        # Read at the handshake, from its own TLS object: a response that fails afterwards still
        # reports the certificate it came with.
        expiry = certificate_expiry(tls)
        if expiry is not None:
            self._trace.saw_certificate(expiry)

    async def fetch(self, request: Request) -> Response:
        """Send `request`, following redirects if it says so, and read the final body up to
        max_body_bytes (one byte more tells that it was longer)."""
        url = URL(request.url)
        method, headers = request.method, CIMultiDict(request.headers)
        data, json_body = request.data, request.json
        for _ in range(MAX_REDIRECTS):
            response = await self._send(method, url, headers, data, json_body)
            if request.follow_redirects == "none" or response.status not in REDIRECTS:
                return response
            location = response.headers.get("Location")
            if location is None:
                return response
            try:
                target = url.join(URL(location))
            except ValueError as err:
                raise ProbeFailed(
                    Reason.PROTOCOL, f"redirected to an unusable URL: {bounded(location)}"
                ) from err
            if target.scheme not in _DEFAULT_PORTS or not target.raw_host:
                raise ProbeFailed(
                    Reason.PROTOCOL, f"redirected to an unusable URL: {bounded(location)}"
                )
            if request.follow_redirects == "same_host" and target.raw_host != url.raw_host:
                return response  # judged as the redirect it is, like a redirect not followed
            # Browsers' (and aiohttp's) rules: 303, and 301/302 after a POST, become a GET
            # without body; credentials do not follow a redirect to another origin.
            if (response.status == 303 and method != "HEAD") or (
                response.status in (301, 302) and method == "POST"
            ):
                method, data, json_body = "GET", None, None
                for name in ("Content-Type", "Content-Length"):
                    headers.popall(name, None)
            if target.origin() != url.origin():
                _drop_credentials(headers, request.secrets)
            url = target
        raise ProbeFailed(
            Reason.HTTP_STATUS,
            f"too many redirects (last status {response.status})",
            response.status,
        )

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: str | Mapping[str, str] | None,
        json_body: Any,
    ) -> Response:
        assert self._session is not None, "use Client as an async context manager"
        trace, limit = self._trace, self._max_body_bytes
        context: ssl.SSLContext | bool = True
        if url.scheme == "https":
            context = client_context(self._tls)
        async with self._session.request(
            method,
            url,
            headers=headers,
            data=data if not isinstance(data, Mapping) else dict(data),
            json=json_body,
            allow_redirects=False,  # followed by fetch(), by the service's own policy
            ssl=context,
            server_hostname=self._tls.server_name,
            proxy=self._route.proxy_for(url),
            trace_request_ctx=trace,
        ) as response:
            trace.enter("transfer")
            trace.status_code = response.status
            headers_in = response.headers
            bodiless = method == "HEAD" or response.status in (204, 304)
            declared = None if bodiless else response.content_length
            # A compressed body's declared length is not the length the limit is about.
            encoded = headers_in.get("Content-Encoding", "identity").strip().lower()
            if declared is not None and declared > limit and encoded == "identity":
                trace.settle()
                response.close()  # refused before reading any of it
                return Response(response.status, headers_in, b"", None, too_large=declared)
            # Read (and decode: aiohttp inflates as much as is asked for, not the whole bomb)
            # one byte past the limit at most, then drop the connection.
            body = bytearray()
            while chunk := await response.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    trace.settle()
                    response.close()
                    return Response(response.status, headers_in, b"", None, too_large=len(body))
            trace.settle()  # the last byte that counts arrived: the probe's clock stops here
            return Response(response.status, headers_in, bytes(body), response.charset)


# Header names that carry credentials whatever their value: the standard ones, and the words
# API keys and tokens are named with (X-Api-Key, X-Auth-Token, X-Session-Id, ...).
_CREDENTIAL_HEADER = re.compile(
    r"authorization|cookie|auth|token|key|secret|passw|session|signature|credential", re.I
)


def _drop_credentials(headers: CIMultiDict[str], secrets: Collection[str]) -> None:
    """Remove every header that may carry a credential before a request leaves for another
    origin: those named like one, and those holding a configured secret (`!env`, `!file`).

    Only Authorization used to be dropped: X-Api-Key, Cookie and a custom token header reached
    the other host.
    """
    for name in {name.lower() for name in headers}:
        values = headers.getall(name)
        if _CREDENTIAL_HEADER.search(name) or any(s in v for v in values for s in secrets):
            headers.popall(name)


# What aiohttp raises, as reasons and messages; socket and TLS errors go to network_failure.
def _library_failure(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        known = network_failure(exc.os_error, trace)
        detail = known.message if known is not None else str(exc.os_error)
        return ProbeFailed(Reason.CONNECT, f"cannot reach the proxy: {detail}")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        reason = Reason.AUTH if exc.status == 407 else Reason.CONNECT
        return ProbeFailed(reason, f"the proxy refused to connect: status {exc.status}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        error = exc.os_error
        return ProbeFailed(Reason.DNS, f"cannot resolve {exc.host}: {error.strerror or error}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return network_failure(exc.certificate_error, trace)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return network_failure(exc.os_error, trace)  # refused, unreachable, a TLS error
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProbeFailed(Reason.PROTOCOL, f"server closed the connection during {trace.phase}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProbeFailed(
            Reason.PROTOCOL, f"broken response body ({_payload_detail(exc)}) during {trace.phase}"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProbeFailed(Reason.PROTOCOL, f"invalid HTTP response: {_parser_text(exc.message)}")
    if isinstance(exc, aiohttp.ClientOSError):
        # A reset, a TLS record that does not decrypt: aiohttp keeps the OS error as the cause
        # (or only its errno).
        cause: OSError = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        if cause is exc and exc.errno is not None:
            kind = ConnectionResetError if exc.errno == errno.ECONNRESET else OSError
            cause = kind(exc.errno, os.strerror(exc.errno))
        return network_failure(cause, trace)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ProbeFailed(Reason.PROTOCOL, f"connection lost during {trace.phase}")
    return network_failure(exc, trace)


def _payload_detail(exc: aiohttp.ClientPayloadError) -> str:
    """What aiohttp says is wrong with a body: the message of the parser error it wraps."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    for error in (cause, *exc.args):
        if isinstance(error, HttpProcessingError):
            text = error.message
            break
    else:
        text = str(exc)
    text = _parser_text(text)
    return text[:1].lower() + text[1:].rstrip(".")


def _parser_text(text: str) -> str:
    """aiohttp's parser message on one line: without the caret line under the bytes it quotes."""
    lines = (line.strip() for line in text.splitlines())
    return bounded(" ".join(line for line in lines if line.strip("^ ")), 120)


# --------------------------------------------------------------------------------------------
# Checks


def _statuses(expect: Expect) -> str:
    return "2xx" if expect.status is None else ", ".join(str(s) for s in expect.status)


def check_status(
    response: Response, expect: Expect, request: Request, detail: str | None = None
) -> None:
    """Fail unless the status is expected (any 2xx by default); `detail` is added to the message."""
    status = response.status
    expected = expect.accepts_status(status)
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


REGEX_TIME_LIMIT = 0.1  # seconds a body_regex may take on one body; it holds the event loop


def _search(pattern: str, text: str, request: Request, status: int) -> bool:
    """Whether `pattern` matches somewhere in `text`, within REGEX_TIME_LIMIT."""
    try:
        return regex.search(pattern, text, timeout=REGEX_TIME_LIMIT) is not None
    except TimeoutError:
        raise ProbeFailed(
            Reason.BODY_MISMATCH,
            f"{request.label}: body_regex /{bounded(pattern, _SHOWN_VALUE)}/ gave up after "
            f"{REGEX_TIME_LIMIT * 1000:.0f} ms on {len(text)} characters (it backtracks too "
            "much on this body)",
            status,
        ) from None


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
        if expect.body_regex is not None and not _search(expect.body_regex, text, request, status):
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


def _has_credentials(step: HTTPStep | HTTPProbe) -> bool:
    if any(name.lower() in _AUTH_HEADERS for name in step.headers):
        return True
    return bool(secret_values(step.headers, step.body, step.form))


def _request(
    step: HTTPStep | HTTPProbe,
    number: int | None,
    credentials: bool,
    secrets: frozenset[str],
    compression: Compression | None,
) -> Request:
    assert step.url is not None  # config validation: a probe without steps has a url
    data: str | dict[str, str] | None = None
    if step.form is not None:
        data = {name: reveal(value) or "" for name, value in step.form.items()}
    elif step.body is not None:
        data = reveal(step.body)
    headers = wire_headers(step.headers)
    if compression is not None and not any(h.lower() == "accept-encoding" for h in headers):
        headers["Accept-Encoding"] = compression  # as blackbox_exporter asks for it
    return Request(
        method=step.method,
        url=step.url,
        label=describe(step.method, step.url, number),
        headers=headers,
        data=data,
        follow_redirects=step.follow_redirects or "any",
        credentials=credentials,
        secrets=secrets,
        compression=compression,
    )


def check_compression(response: Response, request: Request) -> None:
    """Fail when the response is not encoded as `compression` asks (a body there is to encode)."""
    wanted = request.compression
    if wanted is None or request.method == "HEAD" or response.status in (204, 304):
        return
    got = response.content_encoding
    if got != wanted:
        raise ProbeFailed(
            Reason.BODY_MISMATCH,
            f"{request.label}: body encoded {request.quote(got, 30)}, expected {wanted} "
            "(compression)",
            response.status,
        )


def route(config: HTTPProbe) -> tuple[Route, frozenset[str]]:
    """How the probe's requests travel, and the secrets that holds (a proxy's credentials)."""
    proxy = reveal(config.proxy_url)
    secrets: set[str] = set()
    if isinstance(config.proxy_url, SecretStr) and proxy:
        parsed = URL(proxy)
        secrets = {proxy, str(parsed), *(p for p in (parsed.password, parsed.raw_password) if p)}
    return (
        Route(
            proxy=proxy,
            proxy_from_environment=config.proxy_from_environment,
            preferred_ip_protocol=config.preferred_ip_protocol,
            ip_protocol_fallback=config.ip_protocol_fallback,
        ),
        frozenset(secrets),
    )


@dataclass(frozen=True)
class _Plan:
    """What a probe's config says to do, worked out once: every run sends the same requests."""

    steps: tuple[tuple[Request, Expect], ...]  # each request as it goes on the wire, its checks
    route: Route
    secrets: frozenset[str]


# Plans by config object (frozen, but not hashable: its dicts), dropped with their config.
_plans: dict[int, tuple[weakref.ref[HTTPProbe], _Plan]] = {}


def _plan(config: HTTPProbe) -> _Plan:
    key = id(config)
    known = _plans.get(key)
    if known is not None and known[0]() is config:
        return known[1]
    # A single request is described by the probe's own settings, which flow() would copy into
    # a new validated step.
    steps: Sequence[HTTPStep | HTTPProbe] = config.flow() if config.steps else [config]
    path, proxy_secrets = route(config)
    secrets = frozenset(secret_values([(s.headers, s.body, s.form) for s in steps])) | proxy_secrets
    # After a step that logged in, the session cookie is the credential: a 401/403 later in the
    # flow is a refused login too, not just an unexpected status.
    requests: list[tuple[Request, Expect]] = []
    credentials = False
    for number, step in enumerate(steps, start=1):
        credentials = credentials or _has_credentials(step)
        number_shown = number if len(steps) > 1 else None
        request = _request(step, number_shown, credentials, secrets, config.compression)
        requests.append((request, step.expect))
    plan = _Plan(tuple(requests), path, secrets)
    _plans[key] = (weakref.ref(config, lambda _: _plans.pop(key, None)), plan)
    return plan


async def probe(config: HTTPProbe, trace: Trace) -> str:
    """Make the request (or every step in order, sharing cookies) and check each response."""
    # The same requests on every run: worked out on the first (bench/RESULTS.md).
    plan = _plan(config)
    with failures(trace, plan.secrets):
        async with Client(trace, config.tls, config.max_body_bytes, plan.route) as client:
            for request, expect in plan.steps:
                response = await client.fetch(request)
                check_status(response, expect, request)
                check_compression(response, request)
                check_body(response, expect, request)
    done = f"{len(plan.steps)} steps, last " if len(plan.steps) > 1 else ""
    return f"{done}{request.label}: status {response.status}, {len(response.body)} bytes"


KIND = Kind("http", HTTPProbe, probe)
