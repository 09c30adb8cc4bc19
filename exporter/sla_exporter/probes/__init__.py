"""The closed registry of probe kinds: one module per kind, each owning its config section's
model and its prober (`KIND`), found here by the key a service sets in the SLA file.

Adding a kind: write `probes/<kind>.py` with its model, `async def probe(config, trace)` and
`KIND = Kind("<kind>", Model, probe)`, and list it below. The SLA file's `services.<name>`
section then accepts the key (config.py builds the Service model from this registry), the
scheduler runs it, and its failures get the shared reasons (base.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import http, mail_delivery, mail_domain, sms_gateway, smtp
from .base import Kind, ProbeFailed, ProbeResult, Reason, Trace, run_probe

KINDS: Mapping[str, Kind[Any]] = {
    kind.name: kind
    for kind in (
        http.KIND,
        smtp.KIND,
        sms_gateway.KIND,
        mail_delivery.KIND,
        mail_domain.KIND,
    )
}

__all__ = ["KINDS", "Kind", "ProbeFailed", "ProbeResult", "Reason", "Trace", "run_probe"]
