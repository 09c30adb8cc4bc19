"""Prometheus-style durations ("1m", "1h30m", "500ms") parsed to seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# Same grammar as Prometheus' model.ParseDuration: units in descending order, each at most once.
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")


def parse_duration(text: str) -> float:
    """Return the seconds in a Prometheus duration string; raise ValueError if it is not one."""
    match = _DURATION.match(text)
    if not text or text == "0" or match is None or not any(match.groups()):
        raise ValueError(f'must be a duration like "30s", "1m" or "1h30m", got {text!r}')
    return sum(int(n) * _UNITS[u] for n, u in zip(match.groups(), _ORDER, strict=True) if n)


def format_duration(seconds: float) -> str:
    """Render seconds the way Prometheus does ("1h30m", "1m", "500ms")."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit in _ORDER:
        size = round(_UNITS[unit] * 1000)
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
