"""deploy/grafana's dashboard reads only series the gateway exports, by labels they carry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "rightsize-dashboard.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
_SERIES = re.compile(r"\brightsize_[a-z_]+")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _families() -> dict[str, tuple[str, frozenset[str]]]:
    """Each exported series name (with its suffix) -> (family, the labels it carries)."""
    metrics = Metrics(None)
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for metric in vars(metrics).values():
        kind = getattr(metric, "_type", None)
        if kind not in _SUFFIXES:
            continue
        # prometheus_client keeps these on every metric; there is no public accessor.
        labels = frozenset(metric._labelnames) | ({"le"} if kind == "histogram" else set())
        for suffix in _SUFFIXES[kind]:
            series[metric._name + suffix] = (metric._name, labels)
    return series


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
    ]


@pytest.mark.parametrize(("title", "expr"), _exprs(), ids=[t for t, _ in _exprs()])
def test_every_query_reads_series_the_gateway_exports_by_their_labels(
    title: str, expr: str
) -> None:
    series = _families()
    names = _SERIES.findall(expr)
    assert names, f"{title}: reads no rightsize series"
    unknown = [name for name in names if name not in series]
    assert not unknown, f"{title}: {unknown} are not exported (known: {sorted(series)})"

    labels = frozenset().union(*(series[name][1] for name in names))
    used = {
        matcher.split("=")[0].rstrip("!~ ").strip()
        for block in _MATCHERS.findall(expr)
        for matcher in block.split(",")
        if matcher.strip()
    }
    used |= {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
    assert used <= labels, f"{title}: labels {sorted(used - labels)} are not on {names}"
    assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses"


def test_the_team_variable_lists_the_teams_of_an_exported_series() -> None:
    team = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "team")
    name, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", team["definition"]).groups()  # type: ignore[union-attr]

    assert label in _families()[name][1]


def test_panels_have_unique_ids_fit_the_grid_and_use_the_datasource_variable() -> None:
    panels = _dashboard()["panels"]

    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
