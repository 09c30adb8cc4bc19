"""The closed registry of probe kinds: config key -> prober and error classifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import http, sms_gateway, smtp
from .base import ProbeFailed, Prober, ProbeResult, Reason, Trace, run_probe


@dataclass(frozen=True)
class Kind:
    prober: Prober
    classify: Callable[[BaseException, Trace], ProbeFailed | None]


PROBERS: dict[str, Kind] = {
    "http": Kind(http.probe, http.classify),
    "smtp": Kind(smtp.probe, smtp.classify),
    "sms_gateway": Kind(sms_gateway.probe, sms_gateway.classify),
}

__all__ = ["PROBERS", "Kind", "ProbeFailed", "ProbeResult", "Reason", "Trace", "run_probe"]
