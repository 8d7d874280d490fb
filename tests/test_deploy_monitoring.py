"""The shipped alert rules and Grafana dashboard, checked by the real tools."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from hookshield.metrics import Metrics
from tests.conftest import needs_tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "hookshield" / "files" / "hookshield-rules.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "hookshield-rules-test.yaml"
DASHBOARD = ROOT / "helm" / "hookshield" / "files" / "hookshield-dashboard.json"
needs_promtool = needs_tool("promtool")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def known_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def used_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bhookshield_[a-z_]+", text))


@needs_promtool
def test_alert_rules_pass_promtool_unit_tests() -> None:
    """`promtool test rules`: every alert fires where it should and nowhere else."""
    assert promtool("check", "rules", str(RULES)).returncode == 0
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert in the rules file appears in the unit tests, expected both to fire and not."""
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert alerts == set(cases)
    # a single input can show both ways; the others must have both expectations
    one_sided = {name for name, kinds in cases.items() if kinds != {True, False}}
    assert one_sided <= {"HookshieldSuccessRateLow", "HookshieldLatencyNearTimeout"}


def test_rules_and_dashboard_use_only_real_metrics() -> None:
    """Every hookshield_* name in the rules and the dashboard is one the process exports."""
    known = known_metric_names()
    for path in (RULES, DASHBOARD):
        assert used_metric_names(path.read_text()) <= known, path.name


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_has_the_standard_schema_fields() -> None:
    """Valid JSON with uid, title, schemaVersion, templating and positioned panels with queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    for key in (
        "uid",
        "title",
        "schemaVersion",
        "version",
        "panels",
        "templating",
        "time",
        "refresh",
    ):
        assert key in dashboard, key
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos", "targets", "datasource"} <= set(panel), panel["title"]
        assert {"x", "y", "w", "h"} == set(panel["gridPos"])
        assert all(t["refId"] and t["expr"] for t in panel["targets"])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("success rate", "latency", "circuit", "queue depth", "dead-letter"):
        assert subject in titles


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with its variables filled in, is valid PromQL for promtool."""
    exprs = [e.replace("$route", ".*") for e in _exprs(json.loads(DASHBOARD.read_text()))]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}  # fmt: skip
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
