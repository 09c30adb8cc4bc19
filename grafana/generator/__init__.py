"""The SLA bundle's Grafana dashboards (grafana/dashboards/*.json), built in code.

    python -m grafana.generator                        # write the dashboards
    python -m grafana.generator --check                # exit 1 if a committed file is stale
    python -m grafana.generator --sla-file my-sla.yml  # dashboards in your SLA's time zone

One module per dashboard (overview, service, exporter, support); what several of them show is in
shared.py, and every panel is made by panels.py, which gives each its description, unit, fixed
datasource and queries the same way. tests/test_dashboards.py regenerates the files and diffs
them, checks them against Grafana's schema, and runs every query against a real Prometheus. The
files say "DO NOT EDIT" in their description: change the code here and run it again.

The builders are Grafana's own grafana-foundation-sdk: typed Python generated from the schemas
Grafana publishes for dashboards and each panel kind, one build per Grafana version (pinned to
the build for docker-compose.yml's Grafana), maintained by Grafana Labs. grafanalib, the other
choice, has had no release since January 2024 and has been looking for maintainers since
Weaveworks, which kept it, wound down; its panel classes are written by hand. docs/DASHBOARDS.md
says more, and how to add a panel.
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard

from grafana.generator import exporter, overview, service, support
from grafana.generator.base import Settings, to_json

DASHBOARDS: dict[str, Callable[[Settings], dashboard.Dashboard]] = {
    f"{module.UID}.json": module.build for module in (overview, service, exporter, support)
}


def render(settings: Settings) -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: to_json(build(settings)) for name, build in DASHBOARDS.items()}
