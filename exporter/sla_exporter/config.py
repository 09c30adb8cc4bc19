"""The SLA file: YAML with `!env`/`!file` secrets, strict models, and errors that name file and line."""

from __future__ import annotations

import difflib
import os
import re
import socket
import types
import typing
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
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
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}  {where}{self.message}"


class ConfigInvalid(Exception):
    """The config file has one or more errors; `str()` lists them all."""

    def __init__(self, file: str, errors: Iterable[ConfigError]) -> None:
        self.file = file
        self.errors = sorted(errors, key=lambda e: (e.line, e.path, e.message))
        count = len(self.errors)
        lines = [f"{file}: {count} error{'s' if count != 1 else ''}"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


def _custom(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    # Our own messages go through verbatim; `field` (optional) names the key they belong to.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"), ctx or None)


# --------------------------------------------------------------------------------------------
# Value types


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _custom("duration", f'must be a duration like "30s" or "1m", got {value!r}')
    if isinstance(value, int | float):
        # A bare number is ambiguous (seconds? minutes?): Prometheus refuses it and so do we.
        raise _custom("duration", f'must be a duration with a unit like "30s", got {value!r}')
    try:
        return parse_duration(value)
    except ValueError as err:
        raise _custom("duration", str(err)) from None


Duration = Annotated[float, BeforeValidator(_duration)]


def _objective(value: float) -> float:
    if not 0 < value < 1:
        raise _custom("objective", f"must be a ratio between 0 and 1 (0.99 for 99%), got {value}")
    return value


Objective = Annotated[float, AfterValidator(_objective)]


def _http_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise _custom("http_status", f"must be an HTTP status 100-599, got {value}")
    return value


HTTPStatus = Annotated[int, AfterValidator(_http_status)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _custom("port", f"must be a TCP port 1-65535, got {value}")
    return value


Port = Annotated[int, AfterValidator(_port)]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _custom(
            "timezone", f'must be an IANA time zone like "Europe/Zurich", got {value!r}'
        ) from None
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]


def _url(value: str) -> str:
    match = re.match(r"^(https?)://([^/?#]+)", value)
    if match is None or match.group(2).rsplit("@", 1)[-1] in ("", ":"):
        raise _custom("url", f"must be an http:// or https:// URL with a host, got {value!r}")
    if "@" in match.group(2):
        # Credentials in a URL end up in logs and on the landing page: use headers or secrets.
        raise _custom("url", "must not contain credentials; use headers with !env or !file")
    return value


URL = Annotated[str, AfterValidator(_url)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise _custom("regex", f"must be a valid regular expression ({err}), got {value!r}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise _custom("file", f"must be a readable file, got {value!r}")
    return value


ExistingFile = Annotated[str, AfterValidator(_existing_file)]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _service_name(value: str) -> str:
    if not _SERVICE_NAME.match(value):
        raise _custom(
            "service_name",
            "must start with a lower-case letter and use only a-z, 0-9, _ and - "
            f"(at most 63 characters), got {value!r}",
        )
    return value


ServiceName = Annotated[str, AfterValidator(_service_name)]
Text = str | SecretStr

# --------------------------------------------------------------------------------------------
# Models


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SLA(Model):
    name: str
    timezone: TimeZone = "UTC"
    objective: Objective = 0.99


class TLS(Model):
    verify: bool = True
    ca_file: ExistingFile | None = None
    server_name: str | None = None


class Expect(Model):
    status: list[HTTPStatus] | None = Field(default=None, min_length=1)
    body_contains: str | None = None
    body_regex: Regex | None = None
    json_: dict[str, Any] | None = Field(default=None, alias="json")


class HTTPStep(Model):
    url: URL
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, Text] = {}
    body: Text | None = None
    form: dict[str, Text] | None = None
    follow_redirects: bool | None = None
    expect: Expect = Expect()

    @model_validator(mode="after")
    def _one_body(self) -> HTTPStep:
        if self.body is not None and self.form is not None:
            raise _custom("body_form", "must set body or form, not both", field="form")
        return self


class HTTPProbe(Model):
    """One request (`url` and friends) or a short flow of `steps` sharing one cookie jar."""

    url: URL | None = None
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, Text] = {}
    body: Text | None = None
    form: dict[str, Text] | None = None
    expect: Expect = Expect()
    steps: list[HTTPStep] | None = Field(default=None, min_length=1, max_length=10)
    follow_redirects: bool = True
    tls: TLS = TLS()
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)

    @model_validator(mode="after")
    def _url_or_steps(self) -> HTTPProbe:
        if (self.url is None) == (self.steps is None):
            raise _custom("url_or_steps", "must set either url or steps, not both or neither")
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
    username: str
    password: SecretStr


class SMTPSend(Model):
    """A test message sent through the server after AUTH, to a mailbox you own."""

    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject: str = "SLA probe"


def _starttls(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false; the user meant the word.
    return "off" if value is False else value


class SMTPProbe(Model):
    host: str
    port: Port | None = None
    implicit_tls: bool = False
    starttls: Annotated[
        Literal["required", "opportunistic", "off"] | None, BeforeValidator(_starttls)
    ] = None
    ehlo_name: str = Field(default_factory=socket.getfqdn)
    tls: TLS = TLS()
    auth: SMTPAuth | None = None
    send: SMTPSend | None = None

    @model_validator(mode="after")
    def _tls_modes(self) -> SMTPProbe:
        if self.implicit_tls and self.starttls in ("required", "opportunistic"):
            raise _custom(
                "smtp_tls",
                f"must be off with implicit_tls (TLS is already up), got {self.starttls!r}",
                field="starttls",
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (465 if self.implicit_tls else 25)

    @property
    def effective_starttls(self) -> str:
        return self.starttls or ("off" if self.implicit_tls else "required")


class SMSSendTest(Model):
    """A real test SMS: costs money, so it is sent only when `enabled` is true."""

    enabled: bool = False
    url: URL
    to: str
    text: str = "SLA probe"


class SMSGatewayProbe(Model):
    url: URL
    method: Literal["GET", "POST"] = "GET"
    token: SecretStr | None = None
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    headers: dict[str, Text] = {}
    expect: Expect = Expect()
    send_test: SMSSendTest | None = None
    tls: TLS = TLS()
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)


# The closed set of probe kinds: a service sets exactly one of these keys.
PROBE_CONFIGS: dict[str, type[Model]] = {
    "http": HTTPProbe,
    "smtp": SMTPProbe,
    "sms_gateway": SMSGatewayProbe,
}

DEFAULT_TIMEOUT = 10.0


class Service(Model):
    description: str = ""
    interval: Duration = 60.0
    timeout: Duration | None = None
    objective: Objective | None = None
    http: HTTPProbe | None = None
    smtp: SMTPProbe | None = None
    sms_gateway: SMSGatewayProbe | None = None

    @model_validator(mode="after")
    def _check(self) -> Service:
        kinds = [k for k in PROBE_CONFIGS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise _custom(
                "probe_kind",
                f"must set exactly one probe kind ({', '.join(PROBE_CONFIGS)}), got {got}",
            )
        if self.interval < 1:
            raise _custom(
                "interval",
                f"must be at least 1s, got {format_duration(self.interval)}",
                field="interval",
            )
        if self.timeout is not None and self.timeout >= self.interval:
            raise _custom(
                "timeout",
                "must be shorter than interval (timeout "
                f"{format_duration(self.timeout)}, interval {format_duration(self.interval)})",
                field="timeout",
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in PROBE_CONFIGS if getattr(self, k) is not None)

    @property
    def probe(self) -> Model:
        return typing.cast(Model, getattr(self, self.kind))

    @property
    def effective_timeout(self) -> float:
        """The configured timeout, or 10s capped at 80% of the interval."""
        return self.timeout if self.timeout is not None else min(DEFAULT_TIMEOUT, self.interval * 0.8)


class Maintenance(Model):
    services: list[str] = Field(min_length=1)
    start: AwareDatetime
    end: AwareDatetime
    description: str = ""

    @model_validator(mode="after")
    def _order(self) -> Maintenance:
        if self.end <= self.start:
            raise _custom(
                "maintenance_order",
                f"must end after it starts (start {self.start.isoformat()}, "
                f"end {self.end.isoformat()})",
                field="end",
            )
        return self

    def covers(self, service: str, when: datetime) -> bool:
        return service in self.services and self.start <= when < self.end


class Config(Model):
    sla: SLA
    services: dict[ServiceName, Service] = Field(min_length=1)
    maintenance: list[Maintenance] = []

    def objective(self, service: str) -> float:
        objective = self.services[service].objective
        return self.sla.objective if objective is None else objective

    def in_maintenance(self, service: str, when: datetime) -> bool:
        return any(m.covers(service, when) for m in self.maintenance)


# --------------------------------------------------------------------------------------------
# YAML with line numbers


Path_ = tuple[str | int, ...]


class _Reader:
    """Builds plain data from a YAML node tree, recording the line of every path on the way."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.errors: list[ConfigError] = []
        self._constructor = yaml.SafeLoader("")

    def error(self, path: Path_, line: int, message: str) -> None:
        self.errors.append(ConfigError(self.file, line, dotted(path), message))

    def read(self, node: yaml.Node, path: Path_ = ()) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)  # merge keys (<<: *anchor)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) or key is None:
                    self.error(path, key_node.start_mark.line + 1, "keys must be plain scalars")
                    continue
                key = str(key) if isinstance(key, bool) or key is None else key
                if key in out:
                    self.error(
                        (*path, key), key_node.start_mark.line + 1, f"duplicate key {key!r}"
                    )
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.read(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag == "!env":
            name = node.value
            if name not in os.environ:
                self.error(path, line, f"environment variable {name} is not set")
                return SecretStr("")
            return SecretStr(os.environ[name])
        if node.tag == "!file":
            try:
                return SecretStr(Path(node.value).read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as err:
                self.error(path, line, f"cannot read secret file {node.value!r}: {err.strerror}")
                return SecretStr("")
        if node.tag.startswith("!"):
            self.error(path, line, f"unknown tag {node.tag}; use !env NAME or !file PATH")
            return None
        return self._constructor.construct_object(node, deep=True)

    def line_of(self, path: Path_) -> int:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MESSAGES = {
    "missing": "required key is missing",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "timezone_aware": "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00",
    "datetime_type": "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00",
    "datetime_parsing": "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00",
}


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation can hold (through Optional, list, dict and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(path: Path_) -> type[BaseModel] | None:
    """The config model that parses the mapping at `path`, for listing its allowed keys."""
    model: type[BaseModel] = Config
    for part in path:
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == part), None
        )
        if field is None:
            if isinstance(part, int) or model is not Config:
                continue  # list index or dict key: stay on the element's model
            return None
        candidates = _unwrap(field.annotation)
        if not candidates:
            return None
        model = candidates[0]
    return model


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _message(err: Mapping[str, Any], path: Path_) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1])
        model = _model_at(path[:-1])
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(key, _keys(model), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else f"; allowed: {', '.join(_keys(model))}"
        return f'unknown key "{key}"{hint}'
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind in ("too_short", "too_long"):
        return f"must have {'at least' if kind == 'too_short' else 'at most'} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
        bound = next(iter(ctx.values()))
        return f"must be {op[kind]} {bound}"
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _clean_loc(loc: Iterable[Any]) -> Path_:
    # Pydantic adds union member names and validator tags to locations; users never wrote those.
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and (
            part in ("str", "SecretStr", "int", "bool", "[key]")
            or part.startswith(("function-", "lax-", "json-or-python", "literal[", "list[", "dict["))
        ):
            continue
        out.append(part)
    return tuple(out)


def _cross_checks(reader: _Reader, data: Any) -> None:
    """Checks that span sections, done on the raw data so they report even beside other errors."""
    if not isinstance(data, dict):
        return
    services = data.get("services") if isinstance(data.get("services"), dict) else {}
    for i, window in enumerate(data.get("maintenance") or []):
        if not isinstance(window, dict) or not isinstance(window.get("services"), list):
            continue
        for j, name in enumerate(window["services"]):
            if services is not None and name not in services:
                path = ("maintenance", i, "services", j)
                close = difflib.get_close_matches(str(name), list(services), n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                reader.error(path, reader.line_of(path), f"unknown service {name!r}{hint}")


def parse(text: str, file: str = "<config>") -> Config:
    """Parse and validate config text; raise ConfigInvalid listing every error."""
    reader = _Reader(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigInvalid(file, [ConfigError(file, line, "", f"invalid YAML: {err.problem}")]) from None
    if node is None:
        raise ConfigInvalid(file, [ConfigError(file, 1, "", "the file is empty")])
    data = reader.read(node)
    _cross_checks(reader, data)
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path = _clean_loc(err["loc"])
            field = (err.get("ctx") or {}).get("field")
            if field:
                path = (*path, field)
            reader.error(path, reader.line_of(path), _message(err, path))
    if reader.errors or config is None:
        raise ConfigInvalid(file, reader.errors)
    return config


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigInvalid(name, [ConfigError(name, 0, "", f"cannot read: {err.strerror}")]) from None
    except UnicodeDecodeError as err:
        raise ConfigInvalid(name, [ConfigError(name, 1, "", f"not UTF-8 text: {err.reason}")]) from None
    return parse(text, name)
