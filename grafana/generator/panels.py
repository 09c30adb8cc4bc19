"""Panel builders: every panel of the dashboards is made here, so each gets its description, its
unit, the fixed datasource and its queries the same way.

Each function returns the SDK's typed builder for its kind, set up with the bundle's defaults;
a dashboard chains the SDK's own methods on it for the rest (`.thresholds(...)`,
`.decimals(3)`, `.mappings(...)`, `.no_value(...)`), and places it with `.span()`/`.height()`
or the `width`/`height` given here.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dashboards
from grafana_foundation_sdk.models import common as options
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as promql

from grafana.generator.base import datasource

GREEN, ORANGE, RED, BLUE, GREY = "green", "orange", "red", "blue", "text"
REFS = "ABCDEFGHIJ"


# ------------------------------------------------------------------------------------------------
# Queries
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel: a value, so one query can be shared by several panels."""

    expr: str
    legend: str = ""
    _: KW_ONLY
    instant: bool = False  # the last value only, not a range over the time picker's
    table: bool = False  # Grafana's "table" format: one column per label, instant

    def target(self, ref: str) -> prometheus.Dataquery:
        """The SDK's query builder for this query, as the panel's query `ref` (A, B, ...)."""
        target = (
            prometheus.Dataquery()
            .datasource(datasource())
            .ref_id(ref)
            .expr(" ".join(self.expr.split()))
            .legend_format(self.legend or "__auto")
            .format(
                promql.PromQueryFormat.TABLE if self.table else promql.PromQueryFormat.TIME_SERIES
            )
        )
        return target.instant() if self.instant or self.table else target.range()


# ------------------------------------------------------------------------------------------------
# Colours, thresholds, mappings, overrides
# ------------------------------------------------------------------------------------------------


def steps(base: str, *more: tuple[float, str]) -> dashboards.ThresholdsConfig:
    """Absolute thresholds: `base` colour below the first value, then each (value, colour)."""
    return (
        dashboards.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [model.Threshold(value=None, color=base)]
            + [model.Threshold(value=value, color=color) for value, color in more]
        )
    )


def mapping(values: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    """A value mapping: {"1": ("OK", "green")} shows 1 as a green "OK"."""
    return [
        model.ValueMap(
            {
                value: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(values.items())
            }
        )
    ]


def up_down() -> list[model.ValueMapping]:
    """1 as a green UP, 0 as a red DOWN."""
    return mapping({"1": ("UP", GREEN), "0": ("DOWN", RED)})


def colour(mode: model.FieldColorModeId) -> dashboards.FieldColor:
    """How values are coloured: by the thresholds, or a palette per series."""
    return dashboards.FieldColor().mode(mode)


def dashed(
    name: str, matcher: typing.Literal["byName", "byRegexp"] = "byName"
) -> dashboards.DashboardFieldConfigSourceOverrides:
    """An override drawing the series `name` (a reference line) dashed and grey."""
    return (
        dashboards.DashboardFieldConfigSourceOverrides()
        .matcher(model.MatcherConfig(id_val=matcher, options=name))
        .properties(
            [
                model.DynamicConfigValue(
                    "custom.lineStyle", options.LineStyle(fill="dash", dash=[10, 10])
                ),
                model.DynamicConfigValue(
                    "color",
                    model.FieldColor(mode=model.FieldColorModeId.FIXED, fixed_color=GREY),
                ),
                model.DynamicConfigValue("custom.fillOpacity", 0),
            ]
        )
    )


def link(title: str, url: str) -> dashboards.DashboardLink:
    """A data link: clicking a value opens `url` (Grafana variables allowed)."""
    return dashboards.DashboardLink(title).url(url)


def objective_from_query(
    objective: float, ref: str
) -> tuple[dashboards.ThresholdsConfig, model.DataTransformerConfig]:
    """Thresholds that turn green at the service's objective, read from Prometheus.

    Grafana thresholds are constants; the transformation "Config from query results" replaces
    threshold 1 with the value of the panel's query `ref`, whose legend is "objective" (that
    query is not drawn). The constant here, the SLA file's default objective, applies only if
    that query returns nothing. https://grafana.com/docs/grafana/latest/panels-visualizations/query-transform-data/transform-data/#config-from-query-results
    """
    return steps(RED, (objective, GREEN)), model.DataTransformerConfig(
        id_val="configFromData",
        options={
            "configRefId": ref,
            "mappings": [
                {
                    "fieldName": "objective",
                    "handlerKey": "threshold1",
                    "handlerArguments": {"threshold": {"color": GREEN}},
                }
            ],
        },
    )


# ------------------------------------------------------------------------------------------------
# Panels
# ------------------------------------------------------------------------------------------------

Panel = typing.TypeVar(
    "Panel", stat.Panel, timeseries.Panel, statetimeline.Panel, bargauge.Panel, table.Panel
)


def _panel(
    panel: Panel,
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    width: int,
    height: int,
) -> Panel:
    """What every panel has: title, description, unit, the datasource, its queries, its size."""
    if not description.strip() or not unit:
        raise ValueError(f"panel {title!r}: every panel needs a description and a unit")
    if not queries:
        raise ValueError(f"panel {title!r}: a panel without a query shows nothing")
    return (
        panel.title(title)
        .description(description)
        .unit(unit)
        .datasource(datasource())
        .targets([query.target(REFS[i]) for i, query in enumerate(queries)])
        .span(width)
        .height(height)
    )


def stat_panel(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 4,
    height: int = 4,
) -> stat.Panel:
    """A number (or a mapped word) per series, its background coloured by the thresholds."""
    return (
        _panel(stat.Panel(), title, description, unit, queries, width, height)
        .color_scheme(colour(model.FieldColorModeId.THRESHOLDS))
        .thresholds(steps(GREEN))
        .mappings([])
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(options.BigValueColorMode.BACKGROUND)
        .graph_mode(options.BigValueGraphMode.NONE)
        .justify_mode(options.BigValueJustifyMode.AUTO)
        .orientation(options.VizOrientation.AUTO)
        .text_mode(options.BigValueTextMode.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
    )


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    stacked: bool = False,
    bars: bool = False,
    thresholds: dashboards.ThresholdsConfig | None = None,
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """Lines (or bars, or stacked areas) over time, with a table legend on the right; with
    `thresholds`, their values drawn as lines."""
    return (
        _panel(timeseries.Panel(), title, description, unit, queries, width, height)
        .color_scheme(colour(model.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(thresholds or steps(GREEN))
        .draw_style(options.GraphDrawStyle.BARS if bars else options.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(60 if (stacked or bars) else 10)
        .show_points(options.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common.StackingConfig()
            .mode(options.StackingMode.NORMAL if stacked else options.StackingMode.NONE)
            .group("A")
        )
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(
                options.GraphThresholdsStyleMode.LINE
                if thresholds
                else options.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common.VizLegendOptions()
            .display_mode(options.LegendDisplayMode.TABLE)
            .placement(options.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(options.TooltipDisplayMode.MULTI)
            .sort(options.SortOrder.DESCENDING)
        )
    )


def state_timeline_panel(
    title: str,
    description: str,
    *queries: Query,
    mappings: list[model.ValueMapping],
    width: int = 12,
    height: int = 6,
) -> statetimeline.Panel:
    """States over time, one band per series, each state coloured by `mappings`."""
    return (
        _panel(statetimeline.Panel(), title, description, "none", queries, width, height)
        .color_scheme(colour(model.FieldColorModeId.THRESHOLDS))
        .thresholds(steps(GREY))
        .mappings(mappings)
        .fill_opacity(80)
        .line_width(0)
        .merge_values(True)
        .show_value(options.VisibilityMode.NEVER)
        .align_value(options.TimelineValueAlignment.LEFT)
        .row_height(0.9)
        .legend(
            common.VizLegendOptions()
            .display_mode(options.LegendDisplayMode.LIST)
            .placement(options.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(options.TooltipDisplayMode.SINGLE)
            .sort(options.SortOrder.NONE)
        )
    )


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 12,
    height: int = 8,
) -> bargauge.Panel:
    """A horizontal bar per series, coloured by the thresholds."""
    return (
        _panel(bargauge.Panel(), title, description, unit, queries, width, height)
        .color_scheme(colour(model.FieldColorModeId.THRESHOLDS))
        .thresholds(steps(BLUE))
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .display_mode(options.BarGaugeDisplayMode.GRADIENT)
        .orientation(options.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .value_mode(options.BarGaugeValueMode.COLOR)
        .name_placement(options.BarGaugeNamePlacement.AUTO)
        .sizing(options.BarGaugeSizing.AUTO)
        .min_viz_height(16)
        .min_viz_width(8)
        .max_viz_height(300)
    )


@dataclass
class Column:
    """A value column of a table: one instant query, shown as `name` in `unit`."""

    name: str
    query: str
    unit: str
    decimals: int | None = None
    mappings: list[model.ValueMapping] | None = None
    thresholds: dashboards.ThresholdsConfig | None = None  # also colours the cell's background

    def properties(self) -> list[model.DynamicConfigValue]:
        """The column's own unit, decimals, mappings and coloured background."""
        properties = [model.DynamicConfigValue("unit", self.unit)]
        if self.decimals is not None:
            properties.append(model.DynamicConfigValue("decimals", self.decimals))
        if self.mappings:
            properties.append(model.DynamicConfigValue("mappings", self.mappings))
        if self.thresholds:
            properties += [
                model.DynamicConfigValue("thresholds", self.thresholds.build()),
                model.DynamicConfigValue(
                    "custom.cellOptions", options.TableColoredBackgroundCellOptions()
                ),
            ]
        return properties


def table_panel(
    title: str,
    description: str,
    columns: Sequence[Column],
    labels: Sequence[tuple[str, str]],
    sort_by: str,
    sort_desc: bool = False,
    width: int = 24,
    height: int = 8,
    links: Sequence[dashboards.DashboardLink] = (),
) -> table.Panel:
    """A table joining instant queries on their labels: `labels` are (label, header) pairs,
    shown first, then one column per value query; `links` open from every cell."""
    rename = {label: header for label, header in labels}
    rename.update({f"Value #{REFS[i]}": column.name for i, column in enumerate(columns)})
    order = {label: i for i, (label, _) in enumerate(labels)}
    order.update({f"Value #{REFS[i]}": len(labels) + i for i in range(len(columns))})
    panel = (
        _panel(
            table.Panel(),
            title,
            description,
            # The unit of the columns that are not values (labels); each value column has its own.
            "none",
            [Query(column.query, table=True) for column in columns],
            width,
            height,
        )
        .align(options.FieldTextAlignment.AUTO)
        .cell_options(options.TableAutoCellOptions())
        .show_header(True)
        .cell_height(options.TableCellHeight.SM)
        .footer(common.TableFooterOptions().show(False).reducer(["sum"]))
        .sort_by([common.TableSortByFieldState().display_name(sort_by).desc(sort_desc)])
        .transformations(
            [
                model.DataTransformerConfig(id_val="merge", options={}),
                model.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True, "__name__": True},
                        "indexByName": order,
                        "renameByName": rename,
                    },
                ),
            ]
        )
    )
    for column in columns:
        panel.override_by_name(column.name, column.properties())
    if links:
        panel.data_links(list(links))
    return panel
