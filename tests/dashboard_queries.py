"""Every PromQL query the dashboard and the alert rules use, and what the proxy exports.

Shared by tests/test_dashboards.py (static: names and labels) and
tests/e2e/test_prometheus.py (a real Prometheus must return data for each).

Rule 1: the exported names come from a live ``MetricsObserver`` registry, with
        the suffixes prometheus_client exposes (counter ``_total``/``_created``;
        histogram ``_bucket``/``_sum``/``_count``/``_created``), never from a list
        kept by hand.
Rule 2: the PromQL reading here is deliberately small (names, label matchers,
        grouping labels); the e2e test lets Prometheus itself parse and run
        every query, so a mistake this reader misses still fails there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from proxy.observe.metrics import MetricsObserver

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
DASHBOARD = DASHBOARDS / "qr-health.json"
ALERTS = DASHBOARDS / "alerts.yml"
# Series Prometheus adds to every scrape, not the proxy's to export.
SCRAPE_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan", "atan2"}
_GRAFANA_VAR = re.compile(r"\$(?:\{[^}]+\}|\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_LABEL_MATCH = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)")
_TEMPLATE = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    where: str          # "dashboard panel 'Operations/s…' A" or "alert DicomProxyArchiveDown"
    expr: str


def exported_metrics(observer: MetricsObserver | None = None) -> dict[str, set[str]]:
    """Every sample name the proxy's registry exposes → the label names it carries."""
    observer = observer or MetricsObserver(["site_a"])
    labels_of: dict[str, tuple[str, ...]] = {
        m._name: tuple(m._labelnames) for m in vars(observer).values()
        if isinstance(m, MetricWrapperBase)}
    out: dict[str, set[str]] = {}
    for family in observer.registry.collect():
        labels = set(labels_of.get(family.name, ()))
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels including those nested in (collapsed) rows."""
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out += all_panels(panel.get("panels", []))
    return out


def dashboard_queries(data: dict[str, Any] | None = None) -> list[Query]:
    data = data if data is not None else dashboard()
    return [Query(f"dashboard panel {p.get('title')!r} {t.get('refId')}", t["expr"])
            for p in all_panels(data["panels"]) for t in p.get("targets", []) if "expr" in t]


def template_queries(data: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(variable, metric, label) for each ``label_values(metric, label)`` variable."""
    data = data if data is not None else dashboard()
    out = []
    for var in data["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _TEMPLATE.match(query)
        assert match, f"variable {var['name']}: only label_values(metric, label) is supported"
        out.append((var["name"], match.group(1), match.group(2)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alert {r.get('alert') or r.get('record')}", " ".join(r["expr"].split()))
            for r in alert_rules()]


def _bare(expr: str) -> str:
    return _STRING.sub('""', _GRAFANA_VAR.sub("1m", expr))


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels excluded)."""
    text = _bare(expr)
    names = {m.group(1) for m in _SELECTOR.finditer(text) if m.group(1)}
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = _GROUPING.sub(" ", re.sub(r"\[[^\]]*\]", " ", text))
    names |= {m.group(1) for m in _IDENT.finditer(text)}
    return {n for n in names if n.lower() not in _KEYWORDS}


def label_matchers(expr: str) -> list[tuple[str | None, set[str]]]:
    """(metric or None, label names matched) for every ``{…}`` selector."""
    text = _STRING.sub('""', _GRAFANA_VAR.sub("x", expr))
    return [(m.group(1), {lm.group(1) for lm in _LABEL_MATCH.finditer(m.group(2))})
            for m in _SELECTOR.finditer(text)]


def grouping_labels(expr: str) -> set[str]:
    text = _bare(expr)
    return {label.strip() for m in _GROUPING.finditer(text)
            for label in m.group(2).split(",") if label.strip()}


def problems(query: Query, exported: dict[str, set[str]]) -> list[str]:
    """Why ``query`` could never return the proxy's data (empty when it can)."""
    known = {**exported, **SCRAPE_SERIES}
    out = []
    names = metric_names(query.expr)
    if not names:
        out.append(f"{query.where}: no metric named in {query.expr!r}")
    for name in sorted(names - set(known)):
        out.append(f"{query.where}: metric {name!r} is not exported by the proxy")
    for metric, labels in label_matchers(query.expr):
        allowed = (known.get(metric, set()) if metric else set()) | TARGET_LABELS
        for label in sorted(labels - allowed) if metric in known else ():
            out.append(f"{query.where}: {metric} has no label {label!r}")
    if names - set(known):
        return out              # grouping cannot be judged against a metric that does not exist
    usable = set().union(*(known[n] for n in names)) | TARGET_LABELS
    for label in sorted(grouping_labels(query.expr) - usable):
        out.append(f"{query.where}: groups by {label!r}, which none of its metrics carries")
    return out


def for_prometheus(expr: str, rate_window: str = "10s") -> str:
    """A dashboard expression with Grafana's variables replaced ("All", a rate window)."""
    text = expr.replace("$__rate_interval", rate_window).replace("${__rate_interval}",
                                                                  rate_window)
    return _GRAFANA_VAR.sub(".*", text)


def signals(expr: str) -> list[str]:
    """An alert expression's parts without their thresholds: each must return data.

    ``A > 0.1 and B > 0`` → ``["A", "B"]``: the alert's condition may be false
    (nothing is wrong), but the series it watches must exist.
    """
    parts, depth, start, i = [], 0, 0, 0
    text = " ".join(expr.split())
    while i < len(text):
        ch = text[i]
        depth += ch in "([{"
        depth -= ch in ")]}"
        for op in (" and ", " or ", " unless "):
            if depth == 0 and text.startswith(op, i):
                parts.append(text[start:i])
                start = i + len(op)
                i = start - 1
                break
        i += 1
    parts.append(text[start:])
    threshold = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+]?[\d.]+(e[-+]?\d+)?\s*$")
    return [threshold.sub("", p).strip() for p in parts]
