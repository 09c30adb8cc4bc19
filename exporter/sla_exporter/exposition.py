"""The Prometheus text format, written directly: families, escaping, numbers, and the writer
that collects each family's lines as services are rendered (collector.py).

Tens of thousands of services make hundreds of thousands of samples per scrape. Built as
prometheus_client Metric and Sample objects and formatted one label at a time, 10,000 services
took seconds per scrape on the event loop (4 s in bench/RESULTS.md); written straight to text,
with each service's label escaped once (store.py) and each family's lines for a batch of
services made by one comprehension (`Exposition.column`), they take a fraction of that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.utils import floatToGoString

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"
T = TypeVar("T")


@dataclass(frozen=True)
class Family:
    """A metric family: its name (counters without `_total`), type, help and label names."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()  # in exposition (sorted) order

    @property
    def sample(self) -> str:
        """The name its samples carry: counters' end in `_total`."""
        return self.name + "_total" if self.type == COUNTER else self.name

    @property
    def samples(self) -> tuple[str, ...]:
        """Every name its samples carry: a histogram's `_bucket`, `_sum` and `_count`."""
        if self.type == HISTOGRAM:
            return tuple(self.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        return (self.sample,)


def escape(value: str) -> str:
    """A label value as both exposition formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    """A sample value, written exactly as prometheus_client writes it (Go's float format)."""
    if value < 1e6:  # the usual case, without the checks for exponents and infinities
        return repr(float(value))
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]  # untyped upstream


def unzip(rows: Sequence[tuple[str, T]]) -> tuple[list[str], list[T]]:
    """(labels, value) rows as the two lists `Exposition.column()` takes."""
    return [labels for labels, _ in rows], [value for _, value in rows]


def headers(family: Family, openmetrics: bool) -> str:
    """The HELP and TYPE lines of `family` in one format or the other."""
    if openmetrics:  # OpenMetrics escapes quotes in help text too; the text format does not
        doc, name = escape(family.help), family.name
    else:
        doc, name = family.help.replace("\\", r"\\").replace("\n", r"\n"), family.sample
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"


class Exposition:
    """The lines of each family, in the families' order, however the samples arrive.

    Lines are joined into one piece of text per family at each `flush` (between two pauses of
    the rendering), encoded at once: a few hundred thousand small strings alive at once would
    cost more than the text, and the text held as a string and as bytes twice as much.
    """

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = families
        self._pending: dict[Family, list[str]] = {f: [] for f in families}
        self._joined: dict[Family, list[bytes]] = {f: [] for f in families}

    def column(
        self, family: Family, labels: Sequence[str], values: Sequence[float], suffix: str = ""
    ) -> None:
        """One sample of `family` for each of `labels` (as written inside the braces), with the
        value at the same place in `values`: a batch of services in one go, each line written
        by one f-string in a comprehension rather than by a call (half the time per line)."""
        if not labels:
            return
        head = family.sample + suffix + "{"
        # number(), inlined for the usual case
        lines = [
            f"{head}{text}}} {v!r}\n"
            if (v := float(value)) < 1e6
            else f"{head}{text}}} {number(v)}\n"
            for text, value in zip(labels, values, strict=True)
        ]
        self._pending[family].append("".join(lines))

    def counts(
        self, family: Family, labels: Sequence[str], values: Sequence[int], suffix: str = ""
    ) -> None:
        """`column()` for whole numbers (counters, 0 and 1): written as their float would be,
        without making one (`5` as `5.0`, exact below 1e6, where Go's format keeps no exponent)."""
        if not labels:
            return
        if max(values) >= 1e6:
            self.column(family, labels, values, suffix)
            return
        head = family.sample + suffix + "{"
        lines = [f"{head}{text}}} {v:d}.0\n" for text, v in zip(labels, values, strict=True)]
        self._pending[family].append("".join(lines))

    def sample(self, family: Family, value: float) -> None:
        """Write the one sample of a family without labels."""
        self._pending[family].append(f"{family.sample} {number(value)}\n")

    def flush(self) -> None:
        for family, pending in self._pending.items():
            if pending:
                self._joined[family].append("".join(pending).encode())
                pending.clear()

    def chunks(self, openmetrics: bool, names: Iterable[str] | None = None) -> Iterator[bytes]:
        """Every family's HELP, TYPE and samples, one family at a time (what is handed out
        is let go of); with `names`, only those sample names."""
        self.flush()
        wanted = None if names is None else set(names)
        for family in self.families:
            parts = self._joined[family]
            if wanted is None or not wanted.isdisjoint(family.samples):
                yield b"".join([headers(family, openmetrics).encode(), *parts])
            parts.clear()

    def text(self, openmetrics: bool, names: Iterable[str] | None = None) -> list[bytes]:
        """`chunks()` all at once."""
        return list(self.chunks(openmetrics, names))
