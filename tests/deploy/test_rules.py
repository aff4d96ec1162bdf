"""Prometheus config and alert rules: promtool check config/rules, and the promtool unit tests in alerts_test.yml."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy import grafana as g
from tests.deploy.prom import ALERTS, ALERTS_TEST, PROM_CONFIG, ensure_prometheus

REQUIRED_ALERTS = {"SafeGeneHarmfulResponseRateHigh", "SafeGeneOverRefusalSpike", "SafeGeneJudgeQueueDropping",
                   "SafeGeneServerDown", "SafeGeneGateRefusedVersion"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_prometheus()[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=PROM_CONFIG.parent)


def test_promtool_check_config(promtool):
    proc = _run(promtool, "check", "config", str(PROM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules(promtool):
    proc = _run(promtool, "check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests(promtool):
    proc = _run(promtool, "test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for grp in yaml.safe_load(ALERTS.read_text())["groups"] for r in grp["rules"] if "alert" in r}


def test_required_alerts_exist_with_severity_and_summary():
    alerts = _alerts()
    assert REQUIRED_ALERTS <= set(alerts)
    for name, r in alerts.items():
        assert r["labels"]["severity"] in ("warning", "critical"), name
        assert r["annotations"].get("summary"), name
        assert g.metric_names(r["expr"]) <= g.CONTRACT_METRICS, name


def test_every_alert_is_tested_firing_and_quiet():
    """Each alert has a unit test where it fires and one where it must stay quiet (not just 'no syntax errors')."""
    fired, quiet = set(), set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert set(_alerts()) <= fired, f"never tested firing: {sorted(set(_alerts()) - fired)}"
    assert set(_alerts()) <= quiet, f"never tested quiet: {sorted(set(_alerts()) - quiet)}"


def test_unit_tests_catch_a_broken_threshold(promtool, tmp_path):
    """Mutation check: raising the harmful-response threshold must make the unit tests fail."""
    text = ALERTS.read_text()
    assert ") > 0.10" in text
    (tmp_path / "alerts.yml").write_text(text.replace(") > 0.10", ") > 0.50", 1))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    proc = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "SafeGeneHarmfulResponseRateHigh" in proc.stdout + proc.stderr
