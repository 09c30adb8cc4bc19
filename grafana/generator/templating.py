"""Dashboard variables (the pickers at the top) and annotations from PromQL queries."""

from __future__ import annotations

import typing

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as model

from grafana.generator.base import datasource


def query_variable(
    name: str,
    label: str,
    query: str,
    description: str,
    multi: bool = True,
    include_all: bool = True,
) -> dashboard.QueryVariable:
    """A variable over label values (`label_values(selector, label)`), refreshed when the time
    range changes; by default several values or all may be picked."""
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(datasource())
        .query({"query": query, "refId": f"{name}-values"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
        .options([])
        .hide(model.VariableHide.DONT_HIDE)
        .regex("")
    )
    if include_all:
        # ".*" rather than a list of every value: also matches series without the label.
        variable.all_value(".*")
        if multi:
            variable.current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return variable


def custom_variable(
    name: str, label: str, values: list[str], default: str, description: str
) -> dashboard.CustomVariable:
    """A variable with a fixed list of values, `default` picked."""
    return (
        dashboard.CustomVariable(name)
        .label(label)
        .description(description)
        .values(",".join(values))
        .current(model.VariableOption(selected=True, text=default, value=default))
        .options(
            [
                model.VariableOption(selected=value == default, text=value, value=value)
                for value in values
            ]
        )
        .multi(False)
        .include_all(False)
        .hide(model.VariableHide.DONT_HIDE)
    )


class PrometheusAnnotationQuery(model.AnnotationQuery):
    """An annotation query with the fields Prometheus' annotation support reads.

    Grafana's dashboard schema types only what every datasource's annotations share (name,
    datasource, colour, `expr`); how Prometheus turns series into events (`step`, `titleFormat`,
    `textFormat`, `tagKeys`, `useValueForTime`) is the datasource's own, read from the annotation
    by packages/grafana-prometheus/src/annotations.ts, so the SDK's model would drop them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.step = "1m"
        self.title_format = ""
        self.text_format = ""
        self.tag_keys = ""
        self.use_value_for_time = False

    def to_json(self) -> dict[str, object]:
        return super().to_json() | {
            "step": self.step,
            "titleFormat": self.title_format,
            "textFormat": self.text_format,
            "tagKeys": self.tag_keys,
            "useValueForTime": self.use_value_for_time,
        }


class PrometheusAnnotation(dashboard.AnnotationQuery):
    """The SDK's annotation builder, building PrometheusAnnotationQuery."""

    _internal: PrometheusAnnotationQuery

    def __init__(self) -> None:
        self._internal = PrometheusAnnotationQuery()

    def build(self) -> PrometheusAnnotationQuery:
        return self._internal

    def title_format(self, title_format: str) -> typing.Self:
        """Each event's title; `{{label}}` is the label's value."""
        self._internal.title_format = title_format
        return self

    def text_format(self, text_format: str) -> typing.Self:
        """Each event's text; `{{label}}` is the label's value."""
        self._internal.text_format = text_format
        return self

    def tag_keys(self, tag_keys: str) -> typing.Self:
        """Labels (comma-separated) whose values become the event's tags."""
        self._internal.tag_keys = tag_keys
        return self


def annotation(
    name: str, expr: str, title: str, text: str, tags: str, color: str
) -> PrometheusAnnotation:
    """Events from a Prometheus query: one region per run of samples the query returns."""
    return (
        PrometheusAnnotation()
        .name(name)
        .datasource(datasource())
        .enable(True)
        .hide(False)
        .icon_color(color)
        .expr(" ".join(expr.split()))
        .title_format(title)
        .text_format(text)
        .tag_keys(tags)
    )
