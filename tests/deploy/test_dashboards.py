"""Static checks of the Grafana dashboards: shape Grafana 10/11 provisions, variables, datasource, and that every
query only reads contract metric names and is valid PromQL once variables are substituted (promtool parses it)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.deploy import grafana as g
from tests.deploy.prom import ensure_prometheus

DS_FILE = g.REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
EXPECTED = {"safegene-safety.json": ("safegene-safety", "SafeGene / Safety"),
            "safegene-serving.json": ("safegene-serving", "SafeGene / Serving")}


@pytest.fixture(params=sorted(EXPECTED), scope="module")
def dash(request) -> dict:
    return json.loads((g.DASHBOARD_DIR / request.param).read_text())


def test_the_two_dashboards_exist():
    assert sorted(p.name for p in g.DASHBOARDS) == sorted(EXPECTED)


def test_identity_and_schema(dash):
    uid, title = next(v for v in EXPECTED.values() if v[0] == dash["uid"])
    assert dash["title"] == title
    assert 36 <= dash["schemaVersion"] <= 41  # Grafana 10.x-11.x
    assert "id" not in dash or dash["id"] is None  # provisioned dashboards must not carry a database id
    ids = [p["id"] for p in g.panels(dash)] + [p["id"] for p in dash["panels"] if p["type"] == "row"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in g.panels(dash):
        gp = p["gridPos"]
        assert gp["w"] >= 1 and gp["x"] + gp["w"] <= 24, p["title"]


def test_every_panel_queries_the_provisioned_datasource(dash):
    ds_uid = yaml.safe_load(DS_FILE.read_text())["datasources"][0]["uid"]
    for p in g.panels(dash):
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        assert p["datasource"] == {"type": "prometheus", "uid": ds_uid}, p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']!r} target {t['refId']} is empty"
            assert t.get("datasource", p["datasource"])["uid"] == ds_uid


def test_model_variable(dash):
    var = {v["name"]: v for v in dash["templating"]["list"]}
    model = var["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "prometheus"
    assert model["definition"] == "label_values(safegene_requests_total, model)"
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    # every safegene_ series a panel reads is filtered by the model variable, except the global judge/queue ones
    for q in g.panel_queries(dash):
        per_model = {m for m in g.metric_names(q.expr) if m.startswith("safegene_")} - {
            "safegene_judge_latency_seconds", "safegene_judge_queue_dropped_total", "safegene_judge_queue_depth",
            "safegene_gate_runs_total", "safegene_gate_duration_seconds", "safegene_gate_last_rate",
            "safegene_gate_last_verdict"}  # per task, not per served model: a gated version is not served yet
        if per_model:
            assert 'model=~"$model"' in q.expr, f"{q}: not filtered by $model"


def test_queries_use_only_contract_metrics(dash):
    for q in g.panel_queries(dash):
        names = g.metric_names(q.expr)
        assert names, f"{q}: reads no safegene_/vllm: metric"
        assert names <= g.CONTRACT_METRICS, f"{q}: unknown metric(s) {sorted(names - g.CONTRACT_METRICS)}"
        assert not names & g.REMOVED_VLLM_METRICS


def test_vllm_panels_use_model_name_label():
    dash = g.load(g.DASHBOARD_DIR / "safegene-serving.json")
    vllm = [q for q in g.panel_queries(dash) if any(m.startswith("vllm:") for m in g.metric_names(q.expr))]
    wanted = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
    assert wanted <= set().union(*(g.metric_names(q.expr) for q in vllm))
    for q in vllm:
        assert 'model_name=~"$model_name"' in q.expr, str(q)


def test_safety_dashboard_content():
    dash = g.load(g.DASHBOARD_DIR / "safegene-safety.json")
    titles = [p["title"] for p in g.panels(dash)]
    for needle in ("Refusal rate on harmful prompts", "Harmful response rate", "Over-refusal rate",
                   "Prompts judged harmful", "Judge latency", "Judge queue", "Served variants and versions"):
        assert any(needle in t for t in titles), f"no panel about {needle!r}"
    # safe vs plain side by side: a pair of panels per rate, one per variant, on the same row
    for rate in ("Refusal rate on harmful prompts", "Harmful response rate", "Over-refusal rate"):
        pair = {p["title"]: p for p in g.panels(dash) if p["title"] in (f"{rate} — plain", f"{rate} — safe")}
        assert len(pair) == 2, rate
        plain, safe = pair[f"{rate} — plain"], pair[f"{rate} — safe"]
        assert plain["gridPos"]["y"] == safe["gridPos"]["y"] and plain["gridPos"]["x"] < safe["gridPos"]["x"]
        assert 'variant="plain"' in plain["targets"][0]["expr"] and 'variant="safe"' in safe["targets"][0]["expr"]
    gate = {p["title"]: p for p in g.panels(dash) if "gate" in p["title"].lower()}
    assert set(gate) == {"Safety gate runs by verdict", "Last gate verdict and numbers per task",
                         "Safety gate duration (p50 / max bucket)"}
    assert 'verdict' in gate["Safety gate runs by verdict"]["targets"][0]["expr"]
    assert {g.metric_names(t["expr"]).pop() for t in gate["Last gate verdict and numbers per task"]["targets"]} == {
        "safegene_gate_last_rate", "safegene_gate_last_verdict"}
    info = next(p for p in g.panels(dash) if p["title"] == "Served variants and versions")
    for label in ("task_version", "safety_version", "coefficients_hash", "mode"):
        assert label in info["targets"][0]["expr"]


def test_all_queries_are_valid_promql(tmp_path):
    """promtool parses each substituted query as a recording rule: catches syntax errors without a server."""
    _, promtool = ensure_prometheus()
    rules = []
    for path in g.DASHBOARDS:
        d = g.load(path)
        values = g.variable_values(d)
        for i, q in enumerate(g.panel_queries(d)):
            rules.append({"record": f"dashboard_check:{path.stem.replace('-', '_')}:{i}",
                          "expr": g.substitute(q.expr, values)})
    f = tmp_path / "dashboard_queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_substitution_rejects_unknown_variables():
    with pytest.raises(KeyError):
        g.substitute('up{x="$nope"}', {})
    assert g.substitute('rate(x{m=~"$model", n=~"${model_name}"}[$__rate_interval])',
                        {"model": ".*", "model_name": "a|b"}) == 'rate(x{m=~".*", n=~"a|b"}[1m])'
