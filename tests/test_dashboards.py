"""Static checks of dashboards/qr-health.json and dashboards/alerts.yml.

Every PromQL query must name only metrics (and labels) the proxy exports, as
derived from a live MetricsObserver registry; the dashboard must be importable
(datasource as a variable, no hard-wired datasource uid). The same queries are
run against a real Prometheus in tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dashboard_queries import (
    ALERTS,
    DASHBOARD,
    Query,
    alert_queries,
    alert_rules,
    all_panels,
    dashboard,
    dashboard_queries,
    exported_metrics,
    for_prometheus,
    grouping_labels,
    label_matchers,
    metric_names,
    problems,
    signals,
    template_queries,
)

EXPORTED = exported_metrics()
QUERIES = dashboard_queries() + alert_queries()


def test_exported_names_carry_the_exposition_suffixes() -> None:
    for name in ("dicom_proxy_operations_total", "dicom_proxy_upstream_duration_seconds_bucket",
                 "dicom_proxy_upstream_duration_seconds_sum",
                 "dicom_proxy_upstream_duration_seconds_count", "dicom_proxy_archive_up",
                 "dicom_proxy_spool_pending", "dicom_proxy_find_truncated_total"):
        assert name in EXPORTED, name
    assert "dicom_proxy_operations" not in EXPORTED            # a counter is only seen as _total
    assert "le" in EXPORTED["dicom_proxy_upstream_duration_seconds_bucket"]
    assert EXPORTED["dicom_proxy_upstream_requests_total"] == {"archive", "operation", "status"}


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_every_query_names_only_exported_metrics_and_labels(query: Query) -> None:
    assert problems(query, EXPORTED) == []


def test_the_checker_fails_a_panel_naming_a_metric_the_proxy_does_not_export() -> None:
    bogus = Query("panel X", 'sum by (archive) (rate(dicom_proxy_find_matchez_total[5m]))')
    assert problems(bogus, EXPORTED) == [
        "panel X: metric 'dicom_proxy_find_matchez_total' is not exported by the proxy"]
    # The counter's family name without _total is not a series either.
    assert problems(Query("p", "rate(dicom_proxy_operations[1m])"), EXPORTED)
    wrong_label = Query("p", 'dicom_proxy_archive_up{archive_name="a"}')
    assert problems(wrong_label, EXPORTED) == [
        "p: dicom_proxy_archive_up has no label 'archive_name'"]
    wrong_group = Query("p", "sum by (route) (rate(dicom_proxy_operations_total[1m]))")
    assert problems(wrong_group, EXPORTED) == [
        "p: groups by 'route', which none of its metrics carries"]


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (archive, le) (rate(a_bucket{x=~"$archive"}'
     "[$__rate_interval])))", {"a_bucket"}),
    ("sum(increase(b_total[5m])) > 0 and on (job) c", {"b_total", "c"}),
    ('up{job="dicom-proxy"} == bool 0', {"up"}),
    ("changes(d[30m]) offset 5m", {"d"}),
])
def test_metric_names_reader(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_and_grouping_readers() -> None:
    expr = 'sum by (archive, le) (rate(m_bucket{archive=~"$archive", status!="x"}[5m]))'
    assert label_matchers(expr) == [("m_bucket", {"archive", "status"})]
    assert grouping_labels(expr) == {"archive", "le"}


def test_signals_strip_thresholds_per_condition() -> None:
    assert signals("a > 0.1") == ["a"]
    assert signals("x > 0 and deriv(x[15m]) > 0") == ["x", "deriv(x[15m])"]
    assert signals("sum by (a) (rate(m{s=\"f\"}[5m])) / sum by (a) (rate(m[5m])) > 1e-3") == [
        'sum by (a) (rate(m{s="f"}[5m])) / sum by (a) (rate(m[5m]))']
    assert signals('up{job="dicom-proxy"} == 0') == ['up{job="dicom-proxy"}']


def test_grafana_variables_become_prometheus_queries() -> None:
    assert for_prometheus('rate(m{a=~"$archive",r=~"${route}"}[$__rate_interval])') == \
        'rate(m{a=~".*",r=~".*"}[10s])'


# -- the dashboard is importable -----------------------------------------------------------


def test_dashboard_is_valid_json_with_the_datasource_as_a_variable() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    text = DASHBOARD.read_text()
    assert '"uid": "${datasource}"' in text
    for panel in all_panels(data["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
            panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    assert data["uid"] and data["title"] and data["schemaVersion"] >= 36
    assert data["id"] is None  # import creates a new dashboard, never overwrites by id


def test_dashboard_layout_ids_and_refids_are_unique() -> None:
    panels = all_panels(dashboard()["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_covers_what_on_call_asked_for() -> None:
    exprs = " ".join(q.expr for q in dashboard_queries())
    for needed in ("dicom_proxy_operations_total", "dicom_proxy_upstream_duration_seconds_bucket",
                   "dicom_proxy_find_matches_total", "dicom_proxy_find_truncated_total",
                   "dicom_proxy_suboperations_total", "dicom_proxy_archive_up",
                   "dicom_proxy_associations_active", "dicom_proxy_spool_pending"):
        assert needed in exprs, needed
    assert "histogram_quantile" in exprs and "by (archive, le)" in exprs


@pytest.mark.parametrize("variable", template_queries(), ids=lambda v: v[0])
def test_template_variables_use_exported_labels(variable: tuple[str, str, str]) -> None:
    _name, metric, label = variable
    assert label in EXPORTED[metric]


# -- alert rules ------------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for wanted in ("DicomProxyArchiveDown", "DicomProxyUpstreamFailureRatio",
                   "DicomProxyFindTruncated", "DicomProxySpoolGrowing"):
        assert wanted in names
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert ALERTS.exists()


def test_dashboard_json_round_trips() -> None:
    data: Any = json.loads(DASHBOARD.read_text())
    assert json.loads(json.dumps(data)) == data
