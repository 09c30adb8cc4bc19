"""The http probe kind: one request or a short flow of steps, checked for status and body."""

from __future__ import annotations

import contextlib
import json
import re
import ssl
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Annotated, Any, Literal
from urllib.parse import quote, quote_plus, urlencode

import aiohttp
import regex
from multidict import CIMultiDict
from pydantic import (
    Field,
    PlainValidator,
    SecretStr,
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
from .http1 import Response, exchange
from .tls import client_context, observing

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

    @field_validator("form")
    @classmethod
    def _one_body(cls, form: Any, info: ValidationInfo) -> Any:
        _body_or_form(form, info)
        return form

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
        known = network_failure(exc, trace)
        if known is None:
            raise
        raise ProbeFailed(known.reason, mask(known.message, secrets), known.status_code) from exc


# --------------------------------------------------------------------------------------------
# The client


REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10  # the 10th redirect in a row fails the probe, as with aiohttp before
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Client:
    """One probe run's HTTP client: a fresh connection per request, one cookie jar, phases traced.

    Phases go to `trace` as they happen, so a timeout names the phase it cut off:
      connect     request start to TCP connected (DNS excluded; includes a redirect's hop)
      dns         host name resolution (absent for IP literals)
      tls         handshake, from the socket being connected to the TLS session being up
      first_byte  connection up to response headers, writing the request included
      transfer    reading the body (and checking it)
    Several requests (steps, redirects, a test SMS) add to the same phase names.
    """

    def __init__(self, trace: Trace, tls: TLS, max_body_bytes: int) -> None:
        self._trace = trace
        self._max_body_bytes = max_body_bytes
        self._tls = tls
        self._cookies: aiohttp.CookieJar | None = None  # made when a server first sets one
        self._observing: contextlib.AbstractContextManager[None] | None = None

    async def __aenter__(self) -> Client:
        self._observing = observing(self)
        self._observing.__enter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._observing is not None:
            self._observing.__exit__(None, None, None)

    def tls_started(self, tls: ssl.SSLObject) -> None:
        self._trace.enter("tls")

    def tls_done(self, tls: ssl.SSLObject) -> None:
        expiry = certificate_expiry(tls)
        if expiry is not None:
            self._trace.saw_certificate(expiry)

    async def fetch(self, request: Request) -> Response:
        """Send `request`, following redirects if it says so, and read the final body up to
        max_body_bytes (one byte more tells that it was longer)."""
        url = URL(request.url)
        method, headers, body = request.method, CIMultiDict(request.headers), _body(request)
        for _ in range(MAX_REDIRECTS):
            response = await self._send(method, url, headers, body)
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
                method, body = "GET", None
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
        self, method: str, url: URL, headers: CIMultiDict[str], body: tuple[bytes, str] | None
    ) -> Response:
        self._trace.enter("connect")
        host = url.raw_host or ""
        port = url.port or _DEFAULT_PORTS[url.scheme]
        tls = None
        if url.scheme == "https":
            tls = client_context(self._tls)
        cookie = self._cookie_header(url)
        response = await exchange(
            self._trace,
            host,
            port,
            _wire(method, url, headers, body, cookie),
            tls,
            self._tls.server_name,
            self._max_body_bytes,
        )
        if "Set-Cookie" in response.headers:
            self._keep_cookies(url, response.headers.getall("Set-Cookie"))
        return response

    def _cookie_header(self, url: URL) -> str | None:
        if self._cookies is None:
            return None
        found = self._cookies.filter_cookies(url)
        return "; ".join(f"{name}={morsel.coded_value}" for name, morsel in found.items()) or None

    def _keep_cookies(self, url: URL, headers: list[str]) -> None:
        if self._cookies is None:
            self._cookies = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies of IP hosts
        cookies: SimpleCookie = SimpleCookie()
        for header in headers:
            with contextlib.suppress(CookieError):  # a malformed cookie is ignored, as browsers do
                cookies.load(header)
        self._cookies.update_cookies(cookies, url)


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


def _body(request: Request) -> tuple[bytes, str] | None:
    """The request body and its content type, as aiohttp would have encoded them."""
    if request.json is not None:
        return json.dumps(request.json).encode(), "application/json"
    if isinstance(request.data, str):
        return request.data.encode(), "text/plain; charset=utf-8"
    if request.data is not None:
        return urlencode(list(request.data.items())).encode(), "application/x-www-form-urlencoded"
    return None


def _wire(
    method: str,
    url: URL,
    configured: CIMultiDict[str],
    body: tuple[bytes, str] | None,
    cookie: str | None,
) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """Method, target, headers and body of the request; configured headers win over ours."""
    headers: CIMultiDict[str] = CIMultiDict(
        {
            "Host": url.host_port_subcomponent or "",
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
        }
    )
    headers.update(configured)
    content = b""
    if body is not None:
        content, content_type = body
        headers.setdefault("Content-Type", content_type)
        headers["Content-Length"] = str(len(content))
    elif method in ("POST", "PUT", "PATCH"):
        headers.setdefault("Content-Length", "0")
    if cookie is not None:
        existing = headers.get("Cookie")
        headers["Cookie"] = f"{existing}; {cookie}" if existing else cookie
    headers["Connection"] = "close"  # one request per connection, and the server knows it
    return method, url.raw_path_qs or "/", list(headers.items()), content


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
    step: HTTPStep | HTTPProbe, number: int | None, credentials: bool, secrets: frozenset[str]
) -> Request:
    assert step.url is not None  # config validation: a probe without steps has a url
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
        follow_redirects=step.follow_redirects or "any",
        credentials=credentials,
        secrets=secrets,
    )


async def probe(config: HTTPProbe, trace: Trace) -> str:
    """Make the request (or every step in order, sharing cookies) and check each response."""
    # A single request is described by the probe's own settings, which flow() would copy into
    # a new validated step on every run: more work than building the request itself.
    steps: Sequence[HTTPStep | HTTPProbe] = config.flow() if config.steps else [config]
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


KIND = Kind("http", HTTPProbe, probe)
