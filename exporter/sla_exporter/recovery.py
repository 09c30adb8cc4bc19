"""Resume the month ledger from the month series Prometheus holds (--storage.recover-from).

A new host, a lost disk or a restored backup leaves the exporter without (part of) its months,
while Prometheus still has what the exporter exposed: the time of each month in each state
(`sla_month_seconds`) and its objective. Read back, those totals stand for each month from its
start up to the time they add up to; what the exporter probes from then on counts after them,
so only the time nobody recorded is unknown. Runs (which minutes failed) do not survive this:
the recovered part of a month is totals only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import aiohttp

from .ledger import STATES, Ledger, ms

log = logging.getLogger(__name__)

LOOKBACK = "31d"  # the exporter exposes its 13 months at every scrape: the last sample is recent


class RecoveryFailed(RuntimeError):
    """The months could not be read from Prometheus; the message says why."""


async def _query(session: aiohttp.ClientSession, url: str, promql: str) -> list[Any]:
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise RecoveryFailed(f"cannot query Prometheus at {url}: {err}") from err
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise RecoveryFailed(f"Prometheus at {url} refused {promql!r}: {error}")
    return list(body["data"]["result"])


async def recover(ledger: Ledger, url: str, match: str) -> int:
    """Fill `ledger` with the months Prometheus at `url` holds for the series `match` selects
    (a selector such as `{job="sla",location="zrh"}`) where they account for more than the
    ledger does; return how many service months were taken."""
    match = match.strip()
    if not (match.startswith("{") and match.endswith("}")):
        raise RecoveryFailed(
            f'--storage.recover-match must be a selector like {{job="sla"}}: {match}'
        )
    url = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        seconds = await _query(
            session, url, f"last_over_time(sla_month_seconds{match}[{LOOKBACK}])"
        )
        objectives = await _query(
            session, url, f"last_over_time(sla_month_objective_ratio{match}[{LOOKBACK}])"
        )
    months: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for sample in seconds:
        labels, (_, value) = sample["metric"], sample["value"]
        of = (labels["sla_service"], labels["month"])
        if labels["state"] in months[of]:
            raise RecoveryFailed(
                f"{match} selects several series of {of[0]} in {of[1]} (one per location or "
                f"instance?): narrow --storage.recover-match to this exporter's own, e.g. "
                f'{{job="sla",location="..."}}'
            )
        if labels["state"] in STATES:
            months[of][labels["state"]] = ms(float(value))
    objective = {
        (s["metric"]["sla_service"], s["metric"]["month"]): float(s["value"][1]) for s in objectives
    }
    if not months:
        raise RecoveryFailed(
            f"Prometheus at {url} holds no sla_month_seconds{match} in the last {LOOKBACK}"
        )
    taken = 0
    for (service, key), totals in sorted(months.items()):
        if ledger.recover(service, key, totals, objective.get((service, key), 0.99)):
            taken += 1
            log.info(
                "recovered %s of %s from Prometheus: %s",
                key,
                service,
                ", ".join(f"{state} {totals.get(state, 0) / 1000:g}s" for state in STATES),
            )
    log.info("recovered %d service months from %s (%s)", taken, url, match)
    return taken
