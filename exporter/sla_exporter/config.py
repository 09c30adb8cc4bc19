"""The SLA file: YAML with `!env`/`!file` secrets, strict models, errors that name file and line."""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import socket
import types
import typing
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import regex
import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .durations import format_duration, parse_duration

# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, order=True)
class ConfigError:
    """One problem in the config file, located by line and dotted path."""

    file: str
    line: int  # 1-based; 0 when the problem is the file itself (unreadable)
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = f"{self.path}: " if self.path else ""
        return f"{where}  {path}{self.message}"


class ConfigInvalid(Exception):
    """The config file has one or more errors; `str()` lists them all."""

    def __init__(self, file: str, errors: Iterable[ConfigError]) -> None:
        self.file = file
        self.errors = sorted(set(errors), key=lambda e: (e.line, e.path, e.message))
        count = len(self.errors)
        lines = [f"{file}: {count} error{'s' if count != 1 else ''}"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


def _custom(kind: str, message: str, field: str | None = None) -> PydanticCustomError:
    """An error with our own wording; `field` moves it from the model onto one of its keys."""
    # pydantic formats `{name}` only for names in the context, so the message needs no escaping.
    return PydanticCustomError(kind, message, {"field": field} if field else None)


def _show(value: Any) -> str:
    """A value as the user wrote it, for "got ..." in messages; never a secret's value."""
    if isinstance(value, SecretStr):
        return "a secret (!env or !file)"
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        text = value if len(value) <= 80 else value[:79] + "…"
        return json.dumps(text, ensure_ascii=False)  # one line, even for a multi-line value
    return str(value)


# --------------------------------------------------------------------------------------------
# Value types


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # A bare number is ambiguous (seconds? minutes?): Prometheus refuses it and so do we.
        raise _custom("duration", f'must be a duration with a unit like "30s", got {_show(value)}')
    if not isinstance(value, str):
        raise _custom("duration", f'must be a duration like "30s" or "1m", got {_show(value)}')
    try:
        return parse_duration(value)
    except ValueError:
        raise _custom(
            "duration", f'must be a duration like "30s", "1m" or "1h30m", got {_show(value)}'
        ) from None


Duration = Annotated[float, BeforeValidator(_duration)]


def _interval(value: float) -> float:
    if value < 1:
        raise _custom("interval", f"must be at least 1s, got {format_duration(value)}")
    return value


def _objective(value: float) -> float:
    if not 0 < value < 1:
        raise _custom(
            "objective", f"must be a ratio above 0 and below 1 (0.99 for 99%), got {value:g}"
        )
    return value


# Strict number and boolean types throughout: YAML already typed the value, and pydantic's lax
# mode would read `port: yes` as port 1 and `end: 1` as a time in 1970.
Objective = Annotated[StrictFloat, AfterValidator(_objective)]


def _http_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise _custom("http_status", f"must be an HTTP status 100-599, got {value}")
    return value


HTTPStatus = Annotated[StrictInt, AfterValidator(_http_status)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _custom("port", f"must be a TCP port 1-65535, got {value}")
    return value


Port = Annotated[StrictInt, AfterValidator(_port)]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe", a dir
        raise _custom(
            "timezone", f'must be an IANA time zone like "Europe/Zurich", got {_show(value)}'
        ) from None
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]


def _url(value: str) -> str:
    match = re.match(r"^(https?)://([^/?#]*)", value)
    host = match.group(2).rsplit("@", 1)[-1] if match else ""
    if match is None or host == "" or host.startswith(":"):
        raise _custom("url", f"must be an http:// or https:// URL with a host, got {_show(value)}")
    if "@" in match.group(2):
        # Credentials in a URL end up in logs and on the landing page; the value is not shown
        # here for the same reason.
        raise _custom(
            "url", "must not contain credentials (user:password@); use headers with !env or !file"
        )
    return value


URL = Annotated[str, AfterValidator(_url)]


def _regex(value: str) -> str:
    try:
        regex.compile(value)  # the engine the probe matches with (probes/http.py)
    except regex.error as err:
        raise _custom(
            "regex", f"must be a valid regular expression ({err}), got {_show(value)}"
        ) from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


def _existing_file(value: str, info: ValidationInfo) -> str:
    # Relative to the config file's directory, like the paths in Prometheus' own config.
    base = (info.context or {}).get("base_dir")
    path = Path(base, value) if base is not None else Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise _custom("file", f"must be a readable file, got {_show(value)}")
    return str(path)


ExistingFile = Annotated[str, AfterValidator(_existing_file)]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _service_name(value: str) -> str:
    if not _SERVICE_NAME.match(value):
        raise _custom(
            "service_name",
            "service names must start with a lower-case letter and use only a-z, 0-9, _ and - "
            f"(at most 63 characters), got {_show(value)}",
        )
    return value


ServiceName = Annotated[str, AfterValidator(_service_name)]

# RFC 9110 field-name: a token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise _custom("header_name", f"must be an HTTP header name, got {_show(value)}")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _text(value: Any) -> str | SecretStr:
    # One check instead of pydantic's union, which would report each member separately.
    if isinstance(value, str | SecretStr):
        return value
    raise _custom("text", f"must be a string, got {_show(value)}{_quote_hint(value)}")


# A value that may come from a secret (`!env`/`!file`); read it with `secrets.reveal()`.
Text = Annotated[str | SecretStr, PlainValidator(_text)]

# RFC 9110 5.5: a field value is visible characters, spaces and tabs. A line break would end
# the header on the wire (and start another one the server trusts): refused here, with its line,
# rather than failing every probe at run time.
_NOT_IN_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_value(value: Any) -> Any:
    checked = _text(value)
    raw = checked.get_secret_value() if isinstance(checked, SecretStr) else checked
    if _NOT_IN_HEADER_VALUE.search(raw):
        raise _custom(
            "header_value",
            "must be an HTTP header value, without line breaks or control characters, "
            f"got {_show(checked)}",
        )
    return checked


HeaderValue = Annotated[str | SecretStr, PlainValidator(_header_value)]
# The same check after a field's own validation (a token, a prefix), for values sent in a header.
InHeader = AfterValidator(_header_value)
Headers = dict[HeaderName, HeaderValue]
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _quote_hint(value: Any) -> str:
    if isinstance(value, bool | int | float | date):
        return "; put it in quotes to make it text"
    return ""


# --------------------------------------------------------------------------------------------
# Models


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SLA(Model):
    """What the SLA is called, the zone its calendar is written in, and its default objective."""

    name: str = Field(min_length=1)
    timezone: TimeZone = "UTC"
    objective: Objective = 0.99
    # Slots of the month in which no probe ran (the exporter was down or behind): counted as
    # down, the cautious reading, or excluded from the ratio.
    unknown: Literal["down", "excluded"] = "down"


class TLS(Model):
    verify: StrictBool = True
    ca_file: ExistingFile | None = None
    server_name: str | None = None


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
    raise _custom(
        "redirects",
        "must be one of none, same_host, any (or true for any, false for none), "
        f"got {_show(value)}",
    )


Redirects = Annotated[RedirectPolicy, PlainValidator(_redirects)]


def _body_or_form(body: Any, info: ValidationInfo) -> None:
    if body is not None and info.data.get("body") is not None:
        raise _custom("body_form", "cannot be set together with body; use one or the other")


class HTTPStep(Model):
    url: URL
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

    url: URL | None = None
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
            raise _custom("url_or_steps", "must set url (one request) or steps (a flow)")
        if self.url is not None and self.steps is not None:
            raise _custom(
                "url_or_steps",
                "cannot be used together with url; use url for one request or steps for a flow",
                field="steps",
            )
        if self.steps is not None:
            for key in _REQUEST_KEYS:
                if key in self.model_fields_set:
                    raise _custom(
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


class SMTPAuth(Model):
    username: str = Field(min_length=1)
    password: SecretStr


class SMTPSend(Model):
    """A test message sent through the server after AUTH, to a mailbox you own."""

    from_: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    subject: str = "SLA probe"


def _starttls(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` (and `no`, `false`) as false; the user meant the word.
    if value is False:
        return "off"
    if value is True:
        raise _custom(
            "starttls",
            'must be "required", "opportunistic" or "off", got true '
            "(on, yes and true are ambiguous here)",
        )
    return value


def _host(value: str) -> str:
    if not value or "/" in value or any(c.isspace() for c in value):
        raise _custom("host", f"must be a host name or IP address, got {_show(value)}")
    if value.count(":") == 1:
        raise _custom("host", f"must not include a port (use port), got {_show(value)}")
    return value


@functools.cache
def _fqdn() -> str:
    # getfqdn() can wait on DNS; do it once per process, not on every reload.
    return socket.getfqdn()


StartTLS = Literal["required", "opportunistic", "off"]


class SMTPProbe(Model):
    host: Annotated[str, AfterValidator(_host)]
    port: Port | None = None
    implicit_tls: StrictBool = False
    starttls: Annotated[StartTLS | None, BeforeValidator(_starttls)] = None
    ehlo_name: str = Field(default_factory=_fqdn, min_length=1)
    tls: TLS = TLS()
    auth: SMTPAuth | None = None
    send: SMTPSend | None = None

    @field_validator("starttls")
    @classmethod
    def _tls_modes(cls, starttls: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("implicit_tls") and starttls in ("required", "opportunistic"):
            raise _custom(
                "smtp_tls",
                f'must be "off" with implicit_tls (TLS is already up), got "{starttls}"',
            )
        return starttls

    @property
    def effective_port(self) -> int:
        """`port`, or 465 with implicit TLS and 25 without."""
        return self.port or (465 if self.implicit_tls else 25)

    @property
    def effective_starttls(self) -> StartTLS:
        """`starttls`, or "off" with implicit TLS and "required" without."""
        if self.starttls is not None:
            return self.starttls
        return "off" if self.implicit_tls else "required"


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


# The closed set of probe kinds: a service sets exactly one of these keys.
PROBE_CONFIGS: dict[str, type[Model]] = {
    "http": HTTPProbe,
    "smtp": SMTPProbe,
    "sms_gateway": SMSGatewayProbe,
}

DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0


class Service(Model):
    description: str = ""
    interval: Annotated[Duration, AfterValidator(_interval)] = DEFAULT_INTERVAL
    timeout: Duration | None = None
    # Re-probe a failing service this long after each failed probe, between its regular slots,
    # until it answers: a failure is confirmed (three in a row) within two of these, and a
    # recovery seen within one. The month counts the regular slots only.
    confirm: Duration | None = None
    objective: Objective | None = None
    http: HTTPProbe | None = None
    smtp: SMTPProbe | None = None
    sms_gateway: SMSGatewayProbe | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float | None, info: ValidationInfo) -> float | None:
        # A field validator, not a model one, so it reports beside errors in the probe section.
        interval = info.data.get("interval")
        if timeout is not None and timeout <= 0:
            raise _custom("timeout", "must be longer than 0s")
        if timeout is not None and interval is not None and timeout >= interval:
            raise _custom(
                "timeout",
                "must be shorter than interval (timeout "
                f"{format_duration(timeout)}, interval {format_duration(interval)})",
            )
        return timeout

    @field_validator("confirm")
    @classmethod
    def _confirm(cls, confirm: float | None, info: ValidationInfo) -> float | None:
        interval = info.data.get("interval")
        if confirm is not None and interval is not None and 2 * confirm >= interval:
            raise _custom(
                "confirm",
                "must be shorter than half the interval, so that two confirmations fit between "
                f"two regular probes (confirm {format_duration(confirm)}, interval "
                f"{format_duration(interval)})",
            )
        return confirm

    @model_validator(mode="after")
    def _one_kind(self) -> Service:
        kinds = [k for k in PROBE_CONFIGS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = " and ".join(kinds) if kinds else "none"
            raise _custom(
                "probe_kind",
                f"must set exactly one probe kind ({', '.join(PROBE_CONFIGS)}), got {got}",
            )
        return self

    @property
    def kind(self) -> str:
        """The probe kind key this service sets (`http`, `smtp` or `sms_gateway`)."""
        return next(k for k in PROBE_CONFIGS if getattr(self, k) is not None)

    @property
    def probe(self) -> Model:
        """The probe section of this service's kind."""
        return typing.cast(Model, getattr(self, self.kind))

    @property
    def effective_timeout(self) -> float:
        """The configured timeout, or 10s capped at 80% of the interval."""
        if self.timeout is not None:
            return self.timeout
        return min(DEFAULT_TIMEOUT, self.interval * 0.8)


_AWARE = "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00"


def _not_a_number(value: Any) -> Any:
    # Pydantic would take a number for Unix time; in this file it is a typo.
    if isinstance(value, int | float):
        raise _custom("datetime", f"{_AWARE}, got {_show(value)}")
    return value


When = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


class Maintenance(Model):
    """An announced maintenance window: from `start` (inclusive) to `end` (exclusive)."""

    services: list[str] = Field(min_length=1)
    start: When
    end: When
    description: str = ""

    @field_validator("end")
    @classmethod
    def _order(cls, end: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise _custom(
                "maintenance_order",
                f"must be after start (start {start.isoformat()}, end {end.isoformat()})",
            )
        return end

    def covers(self, service: str, when: datetime) -> bool:
        """Whether `service` is in this window at `when` (timezone-aware)."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("covers() needs a timezone-aware datetime")
        return service in self.services and self.start <= when < self.end


class BasicAuth(Model):
    username: str = Field(min_length=1)
    password: SecretStr


class Location(Model):
    """The exporter probing from one location, whose months the pooled figure reads."""

    url: URL  # its base URL, e.g. https://sla-fra.example.net:9141
    basic_auth: BasicAuth | None = None  # if its --web.config.file asks for it
    tls: TLS = TLS()


def _locations(locations: dict[str, Location]) -> dict[str, Location]:
    if len(locations) == 1:
        raise _custom(
            "locations", "must name every location's exporter, this one included (two or more)"
        )
    return locations


class Config(Model):
    sla: SLA
    services: dict[ServiceName, Service] = Field(min_length=1)
    maintenance: list[Maintenance] = []
    # Every location's exporter, for one month figure per service across them (pool.py).
    locations: Annotated[dict[ServiceName, Location], AfterValidator(_locations)] = {}
    # Ticket clocks in business hours (support_config.py); resolved once both modules loaded.
    support: support_config.SupportConfig | None = None

    def objective(self, service: str) -> float:
        """The service's objective, or the SLA's when the service sets none."""
        objective = self.services[service].objective
        return self.sla.objective if objective is None else objective

    def maintenance_by_service(self) -> dict[str, list[tuple[float, float]]]:
        """The declared maintenance windows of each service, as unix times [start, end)."""
        windows: dict[str, list[tuple[float, float]]] = {}
        for window in self.maintenance:
            span = (window.start.timestamp(), window.end.timestamp())
            for name in window.services:
                windows.setdefault(name, []).append(span)
        return windows

    def in_maintenance(self, service: str, when: datetime) -> bool:
        """Whether any announced window covers `service` at `when` (timezone-aware)."""
        return any(m.covers(service, when) for m in self.maintenance)


# --------------------------------------------------------------------------------------------
# YAML with line numbers


Path_ = tuple[str | int, ...]

_YAML_TAG = "tag:yaml.org,2002:"
# Aliases can multiply a small file ("billion laughs"). Reading stops past this many values, or
# past _MAX_EXPANSION times the values the file itself holds, whichever is more: a file of
# 100,000 services (sharded, docs/SCALING.md) reads, a few lines of aliases do not.
_MAX_NODES = 100_000
_MAX_EXPANSION = 10
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_KINDS = {_YAML_TAG + "timestamp": "a date", _YAML_TAG + "int": "a number"}


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


class _Reader:
    """Builds plain data from a YAML node tree, recording the line of every path on the way."""

    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir
        self.lines: dict[Path_, int] = {}
        self.errors: list[ConfigError] = []
        # Paths already reported while reading; the models' errors at or below them are noise.
        self.failed: set[Path_] = set()
        self._constructor = yaml.SafeLoader("")
        self._open: set[int] = set()  # ids of the nodes being read, to catch recursive aliases
        self._count = 0
        self.limit = _MAX_NODES

    def error(self, path: Path_, line: int, message: str) -> None:
        self.failed.add(path)
        self.errors.append(ConfigError(self.file, line, dotted(path), message))

    def reported(self, path: Path_) -> bool:
        """Whether an error at `path` or above it was already reported while reading."""
        return any(path[:end] in self.failed for end in range(len(path) + 1))

    def read(self, node: yaml.Node, path: Path_ = ()) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._count += 1
        if self._count > self.limit:
            if self._count == self.limit + 1:
                self.error(path, line, f"too many values (over {self.limit}); check the aliases")
            return None
        if id(node) in self._open:
            self.error(path, line, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            return self._read(node, path, line)
        finally:
            self._open.discard(id(node))

    def _read(self, node: yaml.Node, path: Path_, line: int) -> Any:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            default = _YAML_TAG + ("map" if isinstance(node, yaml.MappingNode) else "seq")
            if node.tag != default:
                self._bad_tag(node, path, line)
                return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag == "!env":
            return self._env(str(node.value), path, line)
        if node.tag == "!file":
            return self._file(str(node.value), path, line)
        if node.tag not in yaml.SafeLoader.yaml_constructors:
            self._bad_tag(node, path, line)
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            value, kind = _show(node.value), _KINDS.get(node.tag, _tag(node.tag))
            self.error(path, line, f"cannot read {value} as {kind}: {problem}")
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        # Keys written in this mapping, as opposed to keys merged in from `<<: *anchor`, which
        # they may override (that is what merge keys are for).
        written = {id(k) for k, _ in node.value if k.tag != _YAML_TAG + "merge"}
        try:
            self._constructor.flatten_mapping(node)  # merge keys (<<: *anchor)
        except yaml.YAMLError as err:
            self.error(path, node.start_mark.line + 1, f"invalid merge key: {err}")
            return {}
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or not key_node.tag.startswith(_YAML_TAG):
                self.error(path, key_line, "keys must be plain names, not lists, mappings or tags")
                continue
            # The key as written: `404:` is the name "404" and `off:` the name "off".
            key = str(key_node.value)
            if id(key_node) in written:
                if key in seen:
                    message = f'duplicate key "{key}" (first on line {seen[key]})'
                    self.error((*path, key), key_line, message)
                seen[key] = key_line
            self.lines[(*path, key)] = key_line
            out[key] = self.read(value_node, (*path, key))
        return out

    def _bad_tag(self, node: yaml.Node, path: Path_, line: int) -> None:
        if node.tag in ("!env", "!file"):
            usage = "!env NAME" if node.tag == "!env" else "!file PATH"
            self.error(path, line, f"{node.tag} takes one plain value, like {usage}")
        else:
            self.error(path, line, f"unknown tag {_tag(node.tag)}; use !env NAME or !file PATH")

    def _env(self, name: str, path: Path_, line: int) -> SecretStr | None:
        if not _ENV_NAME.match(name):
            self.error(path, line, f"!env needs an environment variable name, got {_show(name)}")
            return None
        value = os.environ.get(name)
        if value is None:
            self.error(path, line, f"environment variable {name} is not set")
            return None
        if value == "":
            self.error(path, line, f"environment variable {name} is empty")
            return None
        return SecretStr(value)

    def _file(self, name: str, path: Path_, line: int) -> SecretStr | None:
        if not name:
            self.error(path, line, "!file needs a file path, like !file /run/secrets/token")
            return None
        try:
            # Relative paths are relative to the config file, so the config can move with them.
            text = Path(self.base_dir, name).read_text(encoding="utf-8")
        except OSError as err:
            self.error(path, line, f'cannot read secret file "{name}": {err.strerror or err}')
            return None
        except UnicodeDecodeError:
            self.error(path, line, f'secret file "{name}" is not UTF-8 text')
            return None
        # Editors and `echo` add a final newline that is never part of the secret.
        text = text.rstrip("\r\n")
        if not text:
            self.error(path, line, f'secret file "{name}" is empty')
            return None
        return SecretStr(text)

    def line_of(self, path: Path_) -> int:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def dotted(path: Iterable[str | int]) -> str:
    """A path as users read it: `services.app.http.steps[1].url`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # Keys the user made up (service and header names) may hold any character; quote those.
        name = part if _PLAIN_KEY.match(part) else _show(part)
        out += f".{name}" if out else name
    return out


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------------------------
# Pydantic errors in our words


_SECRET_IN_SLA = (
    "cannot be a secret (!env or !file); secrets are allowed in headers, body, form, "
    "token and auth.password"
)

_MESSAGES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "timezone_aware": _AWARE,
    "datetime_type": _AWARE,
    "datetime_parsing": _AWARE,
    "datetime_from_date_parsing": _AWARE,
}


def _strip(annotation: Any) -> Any:
    """The annotation without Annotated, Optional, or a union's non-model members."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = (models or args)[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], path: Path_) -> type[BaseModel] | None:
    """The model that parses the mapping at `path`, for listing its allowed keys."""
    annotation: Any = root
    for part in path:
        annotation = _strip(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next(
                (f for n, f in annotation.model_fields.items() if (f.alias or n) == part), None
            )
            if field is None:
                return None
            annotation = field.annotation
        elif origin is list and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return None
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown_key(root: type[BaseModel], path: Path_) -> str:
    key = str(path[-1])
    model = _model_at(root, path[:-1])
    if model is None:
        return f'unknown key "{key}"'
    close = difflib.get_close_matches(key, _keys(model), n=1, cutoff=0.6)
    if close:
        return f'unknown key "{key}"; did you mean "{close[0]}"?'
    return f'unknown key "{key}"; allowed: {", ".join(_keys(model))}'


def _message(root: type[BaseModel], err: Mapping[str, Any], path: Path_) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(root, path)
    if kind == "missing":
        return "required key is missing"
    if isinstance(value, SecretStr) and kind.endswith("_type"):
        return _SECRET_IN_SLA if root is Config else "cannot be a secret (!env or !file)"
    if not path and kind == "model_type":
        keys = [f.alias or n for n, f in root.model_fields.items() if f.is_required()]
        with_keys = f" with the keys {' and '.join(keys)}" if keys else ""
        return f"the file must be a mapping{with_keys}, got {_show(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {expected}, got {_show(value)}"
    if kind in ("too_short", "too_long", "string_too_short"):
        if kind == "string_too_short" or ctx.get("min_length") == 1:
            return "must not be empty"
        if kind == "too_short":
            return f"must have at least {ctx['min_length']} items"
        return f"must have at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {_show(value)}"
    if kind in _MESSAGES:
        hint = _quote_hint(value) if kind == "string_type" else ""
        return f"{_MESSAGES[kind]}, got {_show(value)}{hint}"
    # Our own PydanticCustomErrors, and anything pydantic says that we have not reworded.
    return str(err["msg"]).removeprefix("Value error, ")


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "SecretStr", "datetime", "dict", "list"}


def _clean_loc(loc: Iterable[Any], data: Any) -> Path_:
    """The path the user wrote, from a pydantic location.

    Pydantic adds validator and union member names to locations (`function-after[...]`,
    `[key]`, `str`); walking the data alongside tells them from keys the user wrote.
    """
    out: list[str | int] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if (isinstance(node, dict) and part in node) or in_list:
            node = node[part]
        elif isinstance(part, str) and ("[" in part or "-" in part or part in _TYPE_TAGS):
            continue
        else:
            node = None  # a key the user left out (missing) or did not write
        out.append(part)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Checks across sections of the SLA file


def _prepare_sla(reader: _Reader, data: Any) -> Any:
    """Drop `x-` keys and check what spans sections, on the raw data so it reports beside
    every other error."""
    if not isinstance(data, dict):
        return data
    # Top-level `x-` keys hold YAML anchors for reuse (as in Compose files); they are not config.
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    if not isinstance(data.get("services"), dict):
        return data
    services = [str(name) for name in data["services"]]
    windows = data.get("maintenance")
    for i, window in enumerate(windows if isinstance(windows, list) else []):
        if not isinstance(window, dict) or not isinstance(window.get("services"), list):
            continue
        for j, name in enumerate(window["services"]):
            if not isinstance(name, str) or name in services:
                continue  # not a string: the model reports it
            path = ("maintenance", i, "services", j)
            close = difflib.get_close_matches(name, services, n=1)
            hint = f'did you mean "{close[0]}"?' if close else f"services: {', '.join(services)}"
            reader.error(path, reader.line_of(path), f'unknown service "{name}"; {hint}')
    return data


# --------------------------------------------------------------------------------------------
# Entry points


M = typing.TypeVar("M", bound=BaseModel)


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    problem = err.problem or "cannot parse"
    if problem.startswith("but "):  # "expected X" is the context, "but found Y" the problem
        return f"{err.context}, {problem}"
    if err.context:
        problem += f" {err.context}"
    if "block" in problem:
        problem += " (check the indentation)"
    return problem


def explain(model: type[BaseModel], exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    """The errors of validating `data` into `model` as (dotted path, message), in the words
    the SLA file's errors use; for other input checked with the same models (ticket events)."""
    out = []
    for detail in exc.errors():
        path = _clean_loc(detail["loc"], data)
        field = (detail.get("ctx") or {}).get("field")
        if field:
            path = (*path, field)
        out.append((dotted(path), _message(model, detail, path)))
    return out


def parse_model(
    text: str,
    file: str,
    model: type[M],
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> M:
    """Parse YAML text into `model` the way the SLA file is read; raise ConfigInvalid.

    The same reader serves other YAML files (the web config): `!env`/`!file` secrets, unknown
    keys as errors, every error with its line. `file` names the file in messages; relative
    paths (`!file`, `ExistingFile` fields) are relative to `base_dir`, by default the
    directory of `file`.
    """
    if base_dir is None:
        base_dir = "." if file.startswith("<") else (os.path.dirname(file) or ".")
    reader = _Reader(file, Path(base_dir))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        error = ConfigError(file, line, "", f"invalid YAML: {_yaml_problem(err)}")
        raise ConfigInvalid(file, [error]) from None
    except yaml.YAMLError as err:
        raise ConfigInvalid(file, [ConfigError(file, 1, "", f"invalid YAML: {err}")]) from None
    if node is None:
        raise ConfigInvalid(file, [ConfigError(file, 1, "", "the file is empty")])
    reader.limit = max(_MAX_NODES, _MAX_EXPANSION * _distinct_nodes(node))
    data = reader.read(node)
    if model is Config:
        data = _prepare_sla(reader, data)
    elif model is SLASection:
        # Only `sla:` is read: a secret the rest of the file names need not be at hand.
        reader.errors = [e for e in reader.errors if not e.path or e.path.split(".")[0] == "sla"]
    result = None
    try:
        result = model.model_validate(data, context={"base_dir": reader.base_dir})
    except ValidationError as exc:
        for detail in exc.errors():
            path = _clean_loc(detail["loc"], data)
            field = (detail.get("ctx") or {}).get("field")
            if field:
                path = (*path, field)
            if reader.reported(path):
                continue
            message = _message(model, detail, path)
            reader.errors.append(ConfigError(file, reader.line_of(path), dotted(path), message))
    if reader.errors or result is None:
        raise ConfigInvalid(file, reader.errors)
    return result


def load_model(path: str | os.PathLike[str], model: type[M]) -> M:
    """Read the YAML file at `path` into `model`; raise ConfigInvalid listing every error."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as err:
        message = f"cannot read the file: {err.strerror or err}"
        raise ConfigInvalid(name, [ConfigError(name, 0, "", message)]) from None
    except UnicodeDecodeError as err:
        message = f"the file is not UTF-8 text ({err.reason} at byte {err.start})"
        raise ConfigInvalid(name, [ConfigError(name, 0, "", message)]) from None
    return parse_model(text, name, model)


def parse(
    text: str, file: str = "<config>", *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Parse and validate SLA config text; raise ConfigInvalid listing every error.

    `file` names the file in messages; relative paths in the config (`!file`, `tls.ca_file`)
    are relative to `base_dir`, by default the directory of `file`.
    """
    return parse_model(text, file, Config, base_dir=base_dir)


def _distinct_nodes(root: yaml.Node) -> int:
    """How many values the file itself holds: its nodes, each alias target counted once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(value for _, value in node.value)
    return len(seen)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the SLA config file at `path`."""
    return load_model(path, Config)


class SLASection(Model):
    """An SLA file seen by the tools beside the exporter (the dashboard generator): its `sla:`
    section, read, validated and defaulted exactly as the exporter does; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    sla: SLA


def load_sla(path: str | os.PathLike[str]) -> SLA:
    """The `sla:` section of the SLA file at `path`; raise ConfigInvalid for errors in it."""
    return load_model(path, SLASection).sla


# The `support:` section builds on the value types above, so it is imported last; Config's
# annotation names the module, and pydantic resolves it at first use, in either import order.
from . import support_config  # noqa: E402
