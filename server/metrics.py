"""Prometheus metrics in the ``safegene_`` namespace (team contract 6; dashboards and alerts query these names).

All live in prometheus_client's default registry, which is the one vLLM's ``/metrics`` serves when there is a single
API server, so our series and vLLM's ``vllm:*`` series come from the same endpoint. Labels are only ever filled with
registered served names (unknown names become ``_unknown``) so a client cannot create new series at will.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

UNKNOWN = "_unknown"
LABELS = ("model", "variant", "task")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_JUDGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


def _get_or_create(factory, name: str, *args, **kw):
    """Return the already-registered collector of this name (module re-import in tests) or create it."""
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - prometheus_client has no public lookup
    if existing is not None:
        return existing
    return factory(name, *args, **kw)


REQUESTS = _get_or_create(Counter, "safegene_requests", "Requests by served model/variant and HTTP status",
                          LABELS + ("status",))
PROMPT_TOKENS = _get_or_create(Counter, "safegene_prompt_tokens", "Prompt tokens by served model/variant", LABELS)
COMPLETION_TOKENS = _get_or_create(Counter, "safegene_completion_tokens", "Completion tokens by served model/variant",
                                   LABELS)
LATENCY = _get_or_create(Histogram, "safegene_request_latency_seconds",
                         "End-to-end request latency (streams included)", LABELS, buckets=_LATENCY_BUCKETS)
TTFT = _get_or_create(Histogram, "safegene_time_to_first_token_seconds", "Time to first streamed token", LABELS,
                      buckets=_LATENCY_BUCKETS)
JUDGED = _get_or_create(Counter, "safegene_judged", "Responses judged, by prompt class", LABELS + ("prompt_class",))
REFUSALS = _get_or_create(Counter, "safegene_refusals", "Responses judged refusals, by prompt class",
                          LABELS + ("prompt_class",))
HARMFUL = _get_or_create(Counter, "safegene_harmful_responses", "Responses judged harmful, per judge",
                         LABELS + ("judge",))
OVER_REFUSALS = _get_or_create(Counter, "safegene_over_refusals", "Benign prompts refused", LABELS)
PROMPTS_HARMFUL = _get_or_create(Counter, "safegene_prompts_judged_harmful", "Prompts judged harmful", LABELS)
JUDGE_LATENCY = _get_or_create(Histogram, "safegene_judge_latency_seconds", "Judge latency per batch", ("judge",),
                               buckets=_JUDGE_BUCKETS)
JUDGE_ERRORS = _get_or_create(Counter, "safegene_judge_errors", "Judge batches that failed, per judge (their items "
                              "get no verdict from that judge)", ("judge",))
QUEUE_DROPPED = _get_or_create(Counter, "safegene_judge_queue_dropped", "Judge items dropped because the queue was full")
QUEUE_DEPTH = _get_or_create(Gauge, "safegene_judge_queue_depth", "Items waiting for the judges")
JUDGES_READY = _get_or_create(Gauge, "safegene_judges_ready",
                              "1 once the judge process has loaded every judge, 0 before or when they failed to load")
ADAPTER_INFO = _get_or_create(
    Gauge, "safegene_adapter_info", "1 per served variant, with its lineage",
    ("model", "variant", "task", "task_version", "safety_version", "coefficients_hash", "mode"),
)


REGISTRY_UNAVAILABLE = _get_or_create(
    Gauge, "safegene_registry_unavailable",
    "1 per restored task that is not served because its snapshot is missing or changed (see /admin/variants)",
    ("task",))


REGISTRY_GENERATION = _get_or_create(
    Gauge, "safegene_registry_generation",
    "The registry generation this replica serves (every alias of it loaded); replicas that agree serve the same "
    "versions")
REGISTRY_TARGET_GENERATION = _get_or_create(
    Gauge, "safegene_registry_target_generation",
    "The newest registry generation this replica has seen; above safegene_registry_generation while it loads")
REGISTRY_REACHABLE = _get_or_create(
    Gauge, "safegene_registry_reachable",
    "1 when the last poll of the shared registry (postgres backend) succeeded, 0 while it cannot be reached")
ALIAS_VERSION = _get_or_create(
    Gauge, "safegene_registry_alias_version", "1 per task alias, labelled with the version this replica has loaded",
    ("alias", "version"))


GATE_RUNS = _get_or_create(
    Counter, "safegene_gate_runs", "Safety gate runs on POST /admin/adapters, by task and verdict (promote, "
    "promote_safe_only, refuse)", ("task", "verdict"))
GATE_DURATION = _get_or_create(
    Histogram, "safegene_gate_duration_seconds", "Wall time of one safety gate run (staging load, evaluation of base, "
    "plain and safe, judging, report)", buckets=(10, 30, 60, 120, 300, 600, 900, 1800, 3600))
GATE_LAST_RATE = _get_or_create(
    Gauge, "safegene_gate_last_rate", "The last gate run's numbers per task: variant (base, plain, safe) and metric "
    "(harmful_response_rate, over_refusal_rate, task_accuracy), as a fraction", ("task", "variant", "metric"))
GATE_LAST_VERDICT = _get_or_create(
    Gauge, "safegene_gate_last_verdict", "1 for the verdict of the last gate run of each task", ("task", "verdict"))


def set_gate_last(task: str, verdict: str, values: dict[tuple[str, str], float]) -> None:
    """Replace ``task``'s last-run series: its verdict and its numbers (other tasks' series stay)."""
    for metric in (GATE_LAST_RATE, GATE_LAST_VERDICT):
        for labels in [s.labels for fam in metric.collect() for s in fam.samples if s.labels.get("task") == task]:
            try:
                metric.remove(*(labels[k] for k in metric._labelnames))  # noqa: SLF001
            except KeyError:
                pass
    GATE_LAST_VERDICT.labels(task=task, verdict=verdict).set(1)
    for (variant, metric), value in values.items():
        GATE_LAST_RATE.labels(task=task, variant=variant, metric=metric).set(value)


def set_alias_versions(versions: dict[str, str]) -> None:
    """Replace the per-alias series with ``{alias: version}`` (a retired alias's series disappears)."""
    ALIAS_VERSION.clear()
    for alias, version in versions.items():
        ALIAS_VERSION.labels(alias=alias, version=version).set(1)


def set_unavailable(task: str, flag: bool) -> None:
    if flag:
        REGISTRY_UNAVAILABLE.labels(task=task).set(1)
    else:
        try:
            REGISTRY_UNAVAILABLE.remove(task)
        except KeyError:
            pass


def set_adapter_info(labels: dict[str, str]) -> None:
    ADAPTER_INFO.labels(**labels).set(1)


def remove_adapter_info(labels: dict[str, str]) -> None:
    try:
        ADAPTER_INFO.remove(*(labels[k] for k in ADAPTER_INFO._labelnames))  # noqa: SLF001
    except KeyError:
        pass
