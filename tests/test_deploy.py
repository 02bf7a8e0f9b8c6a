"""deploy/: the Prometheus rules and the Grafana dashboard.

promtool (Debian's `prometheus` package) checks the rules and runs their unit tests where it is
installed. Without it, the files are still parsed here, and every metric name their queries use
is checked against the families the gateway exposes (`gateway.metrics.NAMES`), so a renamed
metric cannot leave an alert that never fires or a panel that stays empty.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: apt-get install prometheus"
)

# A gateway metric as a query names it; not the middle of a recorded series such as
# `instance:gateway_cache_miss:ratio_rate5m`, which is checked against the recording rules.
METRIC = re.compile(r"(?<![\w:])gateway_[a-z_]+")
RECORDED = re.compile(r"(?<![\w:])[a-zA-Z_]\w*:[\w:]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
DATASOURCE_UID = "${datasource}"


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data: rows are only headings, and a collapsed row holds its
    panels inside it."""
    for panel in items:
        if panel.get("type") == "row":
            yield from panels(panel.get("panels", []))
        else:
            yield panel


def exprs() -> Iterator[tuple[str, str]]:
    """(where, query) for every query in the rules and the dashboard."""
    for rule in rules():
        yield f"alerts.yml {rule.get('alert') or rule['record']}", rule["expr"]
    board = dashboard()
    for panel in panels(board["panels"]):
        for target in panel["targets"]:
            yield f"dashboard panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"dashboard variable {variable['name']}", variable["definition"]


def known(name: str, names: frozenset[str]) -> bool:
    """A family name, one of a histogram's series, or a counter's sample name where the family
    is named without `_total` (prometheus-client's own naming)."""
    if name in names:
        return True
    for suffix in (*HISTOGRAM_SERIES, "_total"):
        if name.endswith(suffix) and name.removesuffix(suffix) in names:
            return True
    return False


# ------------------------------------------------------------------------------ promtool


@needs_promtool
@pytest.mark.parametrize(("command", "path"), [("check", ALERTS), ("test", ALERTS_TEST)])
def test_promtool_checks_and_unit_tests_the_rules(command: str, path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, command, "rules", str(path.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ metric names


def test_queries_use_only_exposed_metrics() -> None:
    from gateway.metrics import NAMES

    unknown = sorted(
        f"{where}: {name}"
        for where, expr in exprs()
        for name in METRIC.findall(expr)
        if not known(name, NAMES)
    )
    assert not unknown, "metrics the gateway does not expose:\n" + "\n".join(unknown)


def test_every_query_names_a_gateway_metric() -> None:
    for where, expr in exprs():
        assert METRIC.search(expr) or RECORDED.search(expr), where


def test_recorded_series_are_recorded() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert recorded, "alerts.yml has no recording rules"
    missing = sorted(
        f"{where}: {name}"
        for where, expr in exprs()
        for name in RECORDED.findall(expr)
        if name not in recorded
    )
    assert not missing, "series no recording rule in alerts.yml makes:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------ alerts


def test_every_alert_says_how_long_how_bad_and_what_to_do() -> None:
    found = alerts()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)), names
    for rule in found:
        where = rule["alert"]
        assert rule.get("for"), where
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, where
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), where
        assert len(annotations.get("description", "")) > 80, where


def test_the_alerts_the_issue_asks_for() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in alerts()}
    expected = {
        "GatewayCacheMissRatioHigh": "instance:gateway_cache_miss:ratio_rate5m",
        "GatewayOriginConcurrencyHigh": "instance_origin:gateway_origin_concurrency:ratio_avg1m",
        "GatewayOriginBreakerOpen": "gateway_breaker_open",
        "GatewayOriginRejections": "gateway_origin_rejected_total",
        "GatewayRedisErrors": "gateway_redis_errors_total",
        "GatewayRedisUnavailable": "gateway_redis_available",
        "GatewayPurgeStreamLag": "gateway_purge_stream_lag_seconds",
        "GatewayHigh5xxRatio": "instance:gateway_requests_5xx:ratio_rate5m",
    }
    for name, series in expected.items():
        assert name in by_name, name
        assert series in by_name[name], (name, by_name[name])
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    # The miss ratio's two halves, as the issue defines them.
    assert 'cache_status=~"MISS|EXPIRED"' in recorded["instance:gateway_requests_miss:rate5m"]
    cacheable = recorded["instance:gateway_requests_cacheable:rate5m"]
    assert 'cache_status=~"HIT|MISS|EXPIRED|REVALIDATED|UPDATING|STALE"' in cacheable


# ------------------------------------------------------------------------------ dashboard


def test_dashboard_has_its_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for name in ("instance", "route", "origin", "tenant"):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["definition"].startswith("label_values("), name
        assert variable["definition"].endswith(f", {name})"), name
        assert variable["datasource"]["uid"] == DATASOURCE_UID, name


def test_every_panel_has_a_title_and_queries_the_datasource_variable() -> None:
    board = dashboard()
    shown = list(panels(board["panels"]))
    assert len(shown) >= 15
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in shown:
        title = panel.get("title", "")
        assert title.strip(), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
        assert panel.get("targets"), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target.get("datasource", panel["datasource"])["uid"] == DATASOURCE_UID, title
            assert 'instance=~"$instance"' in target["expr"], title
    for row in board["panels"]:
        if row.get("type") == "row":
            assert row.get("title", "").strip(), row


def test_dashboard_quantiles_are_over_bucket_rates() -> None:
    quantiles = [
        target["expr"]
        for panel in panels(dashboard()["panels"])
        for target in panel["targets"]
        if "histogram_quantile" in target["expr"]
    ]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"rate\(gateway_\w+_bucket\{", expr), expr
        assert "by (le" in expr, expr
