"""The SLA file's schema: the SLA, its services (each with one probe kind), announced
maintenance, the locations that pool their months, and support (support/config.py).

Reading it, with every error's file and line, is loader.py's job; the value types are in
values.py, and each probe kind's section is modelled beside its prober (probes/<kind>.py).
"""

from __future__ import annotations

import difflib
import os
import typing
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from .durations import format_duration
from .loader import Reader, load_model, parse_model
from .probes import KINDS
from .support.config import SupportConfig
from .values import (
    TLS,
    URL,
    Duration,
    Interval,
    Model,
    Objective,
    ServiceName,
    TimeZone,
    When,
    custom,
)


class SLA(Model):
    """What the SLA is called, the zone its calendar is written in, and its default objective."""

    name: str = Field(min_length=1)
    timezone: TimeZone = "UTC"
    objective: Objective = 0.99
    # Slots of the month in which no probe ran (the exporter was down or behind): counted as
    # down, the cautious reading, or excluded from the ratio.
    unknown: Literal["down", "excluded"] = "down"


DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0


class ServiceBase(Model):
    """What every service sets; its probe section (one key per probe kind) is added from the
    registry of kinds (probes/__init__.py) in `Service` below."""

    description: str = ""
    interval: Interval = DEFAULT_INTERVAL
    timeout: Duration | None = None
    # Re-probe a failing service this long after each failed probe, between its regular slots,
    # until it answers: a failure is confirmed (three in a row) within two of these, and a
    # recovery seen within one. The month counts the regular slots only.
    confirm: Duration | None = None
    objective: Objective | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float | None, info: ValidationInfo) -> float | None:
        # A field validator, not a model one, so it reports beside errors in the probe section.
        interval = info.data.get("interval")
        if timeout is not None and timeout <= 0:
            raise custom("timeout", "must be longer than 0s")
        if timeout is not None and interval is not None and timeout >= interval:
            raise custom(
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
            raise custom(
                "confirm",
                "must be shorter than half the interval, so that two confirmations fit between "
                f"two regular probes (confirm {format_duration(confirm)}, interval "
                f"{format_duration(interval)})",
            )
        return confirm

    @model_validator(mode="after")
    def _one_kind(self) -> ServiceBase:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = " and ".join(kinds) if kinds else "none"
            raise custom(
                "probe_kind",
                f"must set exactly one probe kind ({', '.join(KINDS)}), got {got}",
            )
        return self

    @property
    def kind(self) -> str:
        """The probe kind key this service sets (a key of probes.KINDS)."""
        return next(k for k in KINDS if getattr(self, k) is not None)

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


# One key per probe kind, `None` unless the service sets it (ServiceBase checks exactly one is).
if TYPE_CHECKING:
    Service = ServiceBase
else:
    Service = create_model(
        "Service",
        __base__=ServiceBase,
        __module__=__name__,
        **{name: (kind.config | None, None) for name, kind in KINDS.items()},
    )


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
            raise custom(
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
        raise custom(
            "locations", "must name every location's exporter, this one included (two or more)"
        )
    return locations


class Config(Model):
    sla: SLA
    services: dict[ServiceName, Service] = Field(min_length=1)
    maintenance: list[Maintenance] = []
    # Every location's exporter, for one month figure per service across them (pool.py).
    locations: Annotated[dict[ServiceName, Location], AfterValidator(_locations)] = {}
    # Ticket clocks in business hours (support/config.py).
    support: SupportConfig | None = None

    SECRETS_ALLOWED_IN: ClassVar[str] = "headers, body, form, token, proxy_url and auth.password"

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


def _prepare_sla(reader: Reader, data: Any) -> Any:
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


def parse(
    text: str, file: str = "<config>", *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Parse and validate SLA config text; raise ConfigInvalid listing every error.

    `file` names the file in messages; relative paths in the config (`!file`, `tls.ca_file`)
    are relative to `base_dir`, by default the directory of `file`.
    """
    return parse_model(text, file, Config, base_dir=base_dir, prepare=_prepare_sla)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the SLA config file at `path`."""
    return load_model(path, Config, prepare=_prepare_sla)


class SLASection(Model):
    """An SLA file seen by the tools beside the exporter (the dashboard generator): its `sla:`
    section, read, validated and defaulted exactly as the exporter does; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    sla: SLA


def load_sla(path: str | os.PathLike[str]) -> SLA:
    """The `sla:` section of the SLA file at `path`; raise ConfigInvalid for errors in it."""
    return load_model(path, SLASection, sections=frozenset({"sla"})).sla
