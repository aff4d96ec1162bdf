"""Test helper: read our Grafana dashboards and turn their panel queries into plain PromQL.

Grafana substitutes template variables and its built-in intervals before sending a query; tests have to do the
same to run the queries against Prometheus directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "deploy" / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))

BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300", "__interval_ms": "15000"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def panels(dashboard: dict) -> list[dict]:
    """All non-row panels, including those nested in collapsed rows."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


#: the safety gate's series exist only once a gate has run (``tests/server/test_gate_live.py`` checks those panels)
GATE_METRIC_PREFIX = "safegene_gate_"


def gate_panel_queries() -> list[tuple[PanelQuery, str]]:
    """Every panel query of every dashboard that reads a safety-gate series, with its variables substituted as
    Grafana does with 'All' selected."""
    out = []
    for path in DASHBOARDS:
        dash = load(path)
        values = variable_values(dash)
        out += [(q, substitute(q.expr, values)) for q in panel_queries(dash) if GATE_METRIC_PREFIX in q.expr]
    return out


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    return [PanelQuery(dashboard["title"], p.get("title", "?"), t.get("refId", "?"), t.get("expr", ""))
            for p in panels(dashboard) for t in p.get("targets", [])]


def variable_values(dashboard: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """What each template variable expands to when 'All' (or the default) is selected."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        if var.get("includeAll"):
            values[name] = var.get("allValue") or ".*"
        else:
            cur = var.get("current", {}).get("value")
            values[name] = cur[0] if isinstance(cur, list) else str(cur)
    values.update(overrides or {})
    return values


def substitute(expr: str, values: dict[str, str], builtins: dict[str, str] | None = None) -> str:
    """Replace $var, ${var} and [[var]] like Grafana does; unknown variables raise KeyError."""
    table = {**BUILTINS, **(builtins or {}), **values}

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in table:
            raise KeyError(f"unknown dashboard variable ${name} in: {expr}")
        return table[name]

    return _VAR.sub(repl, expr)


#: team contract 6: the only metric names dashboards and alerts may query (histograms add _bucket/_sum/_count)
CONTRACT_METRICS = {
    "safegene_requests_total", "safegene_prompt_tokens_total", "safegene_completion_tokens_total",
    "safegene_request_latency_seconds", "safegene_time_to_first_token_seconds", "safegene_judged_total",
    "safegene_refusals_total", "safegene_harmful_responses_total", "safegene_over_refusals_total",
    "safegene_prompts_judged_harmful_total", "safegene_judge_latency_seconds", "safegene_judge_queue_dropped_total",
    "safegene_judge_queue_depth", "safegene_adapter_info",
    # the safety gate (server/gate.py): runs by verdict, duration, the last run's numbers and verdict per task
    "safegene_gate_runs_total", "safegene_gate_duration_seconds", "safegene_gate_last_rate",
    "safegene_gate_last_verdict",
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds", "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "up",  # Prometheus's own scrape health (alerts only)
}
#: names from vLLM's example dashboard that vLLM 0.30+ no longer exports
REMOVED_VLLM_METRICS = {"vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:num_requests_swapped",
                        "vllm:time_per_output_token_seconds"}
_HIST_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_METRIC = re.compile(r"(?<![\w:])((?:safegene_|vllm:)[A-Za-z0-9_:]+)")


def metric_names(expr: str) -> set[str]:
    """safegene_*/vllm:* names an expression reads, with histogram suffixes folded onto the family name."""
    out = set()
    for name in _METRIC.findall(expr):
        base = _HIST_SUFFIX.sub("", name)
        out.add(base if base in CONTRACT_METRICS else name)
    return out
