"""The SLA's time zone as a metric: its UTC offset, for alert texts that show local time.

Prometheus' alert templates (2.42) have no time-zone function, and Alertmanager's (0.25) have
none either; a template can only add numbers it can query. So the exporter states the offset of
the SLA's zone, and a template reads it at the moment it shows (`@ <timestamp>`): a time
in winter gets +01:00 in Zurich, one in summer +02:00, whenever the text is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import Config


class ZoneCollector(Collector):
    """`sla_timezone_offset_seconds{timezone}`: the SLA zone's offset from UTC at scrape time."""

    def __init__(self, config: Callable[[], Config | None], now: Callable[[], float]) -> None:
        self.config = config
        self.now = now

    def describe(self) -> list[Metric]:
        return []  # nothing until a config is loaded

    def collect(self) -> Iterator[Metric]:
        config = self.config()
        if config is None:
            return
        zone = config.sla.timezone
        offset = datetime.fromtimestamp(self.now(), ZoneInfo(zone)).utcoffset()
        family = GaugeMetricFamily(
            "sla_timezone_offset_seconds",
            "Offset of the SLA's time zone from UTC now, in seconds (3600 for +01:00); alert "
            "texts add it to show times in the SLA's zone.",
            labels=["timezone"],
        )
        family.add_metric([zone], offset.total_seconds() if offset is not None else 0.0)
        yield family
