"""The value types every config file shares: durations, ratios, URLs, names, secrets, TLS.

Each type validates on its own and says what it expected in the words config errors use (see
loader.py for how an error gets its file, line and path). Probe kinds build their sections from
these (probes/<kind>.py); the SLA file's schema is config.py, its support section support/config.py.
"""

from __future__ import annotations

import json
import os
import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import regex
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from .durations import format_duration, parse_duration


def custom(kind: str, message: str, field: str | None = None) -> PydanticCustomError:
    """An error with our own wording; `field` moves it from the model onto one of its keys."""
    # pydantic formats `{name}` only for names in the context, so the message needs no escaping.
    return PydanticCustomError(kind, message, {"field": field} if field else None)


def show(value: Any) -> str:
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


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # A bare number is ambiguous (seconds? minutes?): Prometheus refuses it and so do we.
        raise custom("duration", f'must be a duration with a unit like "30s", got {show(value)}')
    if not isinstance(value, str):
        raise custom("duration", f'must be a duration like "30s" or "1m", got {show(value)}')
    try:
        return parse_duration(value)
    except ValueError:
        raise custom(
            "duration", f'must be a duration like "30s", "1m" or "1h30m", got {show(value)}'
        ) from None


Duration = Annotated[float, BeforeValidator(_duration)]


def _interval(value: float) -> float:
    if value < 1:
        raise custom("interval", f"must be at least 1s, got {format_duration(value)}")
    return value


# How often a service is probed: at least a second.
Interval = Annotated[Duration, AfterValidator(_interval)]


def _objective(value: float) -> float:
    if not 0 < value < 1:
        raise custom(
            "objective", f"must be a ratio above 0 and below 1 (0.99 for 99%), got {value:g}"
        )
    return value


# Strict number and boolean types throughout: YAML already typed the value, and pydantic's lax
# mode would read `port: yes` as port 1 and `end: 1` as a time in 1970.
Objective = Annotated[StrictFloat, AfterValidator(_objective)]


def _http_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise custom("http_status", f"must be an HTTP status 100-599, got {value}")
    return value


HTTPStatus = Annotated[StrictInt, AfterValidator(_http_status)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise custom("port", f"must be a TCP port 1-65535, got {value}")
    return value


Port = Annotated[StrictInt, AfterValidator(_port)]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe", a dir
        raise custom(
            "timezone", f'must be an IANA time zone like "Europe/Zurich", got {show(value)}'
        ) from None
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]


def _url(value: str) -> str:
    match = re.match(r"^(https?)://([^/?#]*)", value)
    host = match.group(2).rsplit("@", 1)[-1] if match else ""
    if match is None or host == "" or host.startswith(":"):
        raise custom("url", f"must be an http:// or https:// URL with a host, got {show(value)}")
    if "@" in match.group(2):
        # Credentials in a URL end up in logs and on the landing page; the value is not shown
        # here for the same reason.
        raise custom(
            "url", "must not contain credentials (user:password@); use headers with !env or !file"
        )
    return value


URL = Annotated[str, AfterValidator(_url)]


def _regex(value: str) -> str:
    try:
        regex.compile(value)  # the engine the probe matches with (probes/http.py)
    except regex.error as err:
        raise custom(
            "regex", f"must be a valid regular expression ({err}), got {show(value)}"
        ) from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


def _existing_file(value: str, info: ValidationInfo) -> str:
    # Relative to the config file's directory, like the paths in Prometheus' own config.
    base = (info.context or {}).get("base_dir")
    path = Path(base, value) if base is not None else Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise custom("file", f"must be a readable file, got {show(value)}")
    return str(path)


ExistingFile = Annotated[str, AfterValidator(_existing_file)]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _service_name(value: str) -> str:
    if not _SERVICE_NAME.match(value):
        raise custom(
            "service_name",
            "service names must start with a lower-case letter and use only a-z, 0-9, _ and - "
            f"(at most 63 characters), got {show(value)}",
        )
    return value


ServiceName = Annotated[str, AfterValidator(_service_name)]

# RFC 9110 field-name: a token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise custom("header_name", f"must be an HTTP header name, got {show(value)}")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _text(value: Any) -> str | SecretStr:
    # One check instead of pydantic's union, which would report each member separately.
    if isinstance(value, str | SecretStr):
        return value
    raise custom("text", f"must be a string, got {show(value)}{quote_hint(value)}")


# A value that may come from a secret (`!env`/`!file`); read it with `reveal()`.
Text = Annotated[str | SecretStr, PlainValidator(_text)]

# RFC 9110 5.5: a field value is visible characters, spaces and tabs. A line break would end
# the header on the wire (and start another one the server trusts): refused here, with its line,
# rather than failing every probe at run time.
_NOT_IN_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_value(value: Any) -> Any:
    checked = _text(value)
    raw = checked.get_secret_value() if isinstance(checked, SecretStr) else checked
    if _NOT_IN_HEADER_VALUE.search(raw):
        raise custom(
            "header_value",
            "must be an HTTP header value, without line breaks or control characters, "
            f"got {show(checked)}",
        )
    return checked


HeaderValue = Annotated[str | SecretStr, PlainValidator(_header_value)]
# The same check after a field's own validation (a token, a prefix), for values sent in a header.
InHeader = AfterValidator(_header_value)
Headers = dict[HeaderName, HeaderValue]
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def quote_hint(value: Any) -> str:
    if isinstance(value, bool | int | float | date):
        return "; put it in quotes to make it text"
    return ""


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TLS(Model):
    verify: StrictBool = True
    ca_file: ExistingFile | None = None
    server_name: str | None = None


AWARE = "must be a date and time with a UTC offset, like 2026-11-28T22:00:00+01:00"


def _not_a_number(value: Any) -> Any:
    # Pydantic would take a number for Unix time; in this file it is a typo.
    if isinstance(value, int | float):
        raise custom("datetime", f"{AWARE}, got {show(value)}")
    return value


When = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


def reveal(value: str | SecretStr | None) -> str | None:
    """The plain text of a config value that may be a secret (`Text`), for the wire only."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value
