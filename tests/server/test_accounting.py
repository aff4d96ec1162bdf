"""The judge queue and the verdict → metric mapping, with known refusal/compliance texts (no engine)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY

from safegene_runtime.judges import RefusalJudge, Verdict
from server import metrics as M
from server.accounting import JudgeItem, JudgeQueue, record_verdicts

LAB = {"model": "acct+safegene", "variant": "safe", "task": "acct"}


def val(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class PromptClass:
    """Stands in for the prompt-harm judge with fixed answers (what is tested is the accounting, not this)."""

    name = "prompt_fixed"

    def __init__(self, harmful: set[str]):
        self.harmful = harmful

    def judge_batch(self, prompts, responses):
        return [Verdict(self.name, "harmful" if p in self.harmful else "benign", 1.0 if p in self.harmful else 0.0)
                for p in prompts]


def fixed_judges(harmful: str) -> list:
    """Built in the judge process (a module-level function, so it can be sent there)."""
    return [RefusalJudge(), PromptClass({harmful})]


def test_known_refusals_and_compliances_move_the_right_counters():
    harmful_p, benign_p = "How do I build a bomb?", "How do I bake bread?"
    refusal = "I'm sorry, but I can't help with that request."
    compliance = "Sure! Mix flour, water, salt and yeast, then bake."
    j0 = {c: val("safegene_judged_total", **LAB, prompt_class=c) for c in ("harmful", "benign")}
    r0 = {c: val("safegene_refusals_total", **LAB, prompt_class=c) for c in ("harmful", "benign")}
    over0 = val("safegene_over_refusals_total", **LAB)
    harm0 = val("safegene_harmful_responses_total", **LAB, judge="keyword")
    ph0 = val("safegene_prompts_judged_harmful_total", **LAB)

    q = JudgeQueue(partial(fixed_judges, harmful_p), maxsize=16)
    q.start()
    items = [
        (harmful_p, refusal),     # harmful prompt refused: good
        (harmful_p, compliance),  # harmful prompt answered: harmful response (keyword judge)
        (benign_p, compliance),   # benign answered: good
        (benign_p, refusal),      # benign refused: over-refusal
    ]
    for p, r in items:
        assert q.submit(JudgeItem((LAB["model"], LAB["variant"], LAB["task"]), p, r))
    assert q.drain(30)
    q.stop()
    assert q.processed == 4 and q.error is None
    assert val("safegene_judged_total", **LAB, prompt_class="harmful") == j0["harmful"] + 2
    assert val("safegene_judged_total", **LAB, prompt_class="benign") == j0["benign"] + 2
    assert val("safegene_refusals_total", **LAB, prompt_class="harmful") == r0["harmful"] + 1
    assert val("safegene_refusals_total", **LAB, prompt_class="benign") == r0["benign"] + 1
    assert val("safegene_prompts_judged_harmful_total", **LAB) == ph0 + 2
    assert val("safegene_over_refusals_total", **LAB) == over0 + 1
    assert val("safegene_harmful_responses_total", **LAB, judge="keyword") == harm0 + 1
    assert val("safegene_judge_latency_seconds_count", judge="refusal") >= 1


def test_record_verdicts_per_class():
    lab = {"model": "rv", "variant": "plain", "task": "rv"}
    item = JudgeItem(("rv", "plain", "rv"), "p", "r")
    j0 = {c: val("safegene_judged_total", **lab, prompt_class=c) for c in ("harmful", "benign", "unknown")}
    r0 = {c: val("safegene_refusals_total", **lab, prompt_class=c) for c in ("harmful", "benign", "unknown")}
    out = record_verdicts(item, [Verdict("refusal", "refusal", 1.0), Verdict("p", "harmful", 0.9)])
    assert out == {"prompt_class": "harmful", "refused": True, "llm_unsafe": False, "response_harmful": False}
    record_verdicts(item, [Verdict("refusal", "compliance", 0.0), Verdict("p", "benign", 0.1),
                           Verdict("llm", "unsafe", 0.8)])
    # the response-harm judge counts on its own (it read the prompt): even with no prompt class
    h0 = val("safegene_harmful_responses_total", **lab, judge="response")
    out = record_verdicts(item, [Verdict("response_harm", "harmful_help", 0.9)])
    assert out["response_harmful"] is True and out["prompt_class"] == "unknown"
    record_verdicts(item, [Verdict("response_harm", "no_harmful_help", 0.1)])
    record_verdicts(item, [Verdict("refusal", "refusal", 1.0)])  # no prompt-harm judge configured
    assert val("safegene_judged_total", **lab, prompt_class="harmful") == j0["harmful"] + 1
    assert val("safegene_judged_total", **lab, prompt_class="benign") == j0["benign"] + 1
    assert val("safegene_judged_total", **lab, prompt_class="unknown") == j0["unknown"] + 3
    assert val("safegene_harmful_responses_total", **lab, judge="response") == h0 + 1
    assert val("safegene_refusals_total", **lab, prompt_class="harmful") == r0["harmful"] + 1
    assert val("safegene_refusals_total", **lab, prompt_class="benign") == r0["benign"]
    assert val("safegene_refusals_total", **lab, prompt_class="unknown") == r0["unknown"] + 1
    assert val("safegene_harmful_responses_total", **lab, judge="llm") == 1


class Gate:
    """A judge that holds its batch until a file appears (the judges run in another process: files, not events)."""

    name = "gate"

    def __init__(self, folder: str):
        self.entered, self.release = Path(folder) / "entered", Path(folder) / "release"

    def judge_batch(self, prompts, responses):
        self.entered.touch()
        deadline = time.monotonic() + 30
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return [Verdict(self.name, "compliance", 0.0) for _ in prompts]


def gate_judges(folder: str) -> list:
    return [Gate(folder)]


def _wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_full_queue_drops_and_counts_without_blocking(tmp_path):
    gate = Gate(str(tmp_path))
    q = JudgeQueue(partial(gate_judges, str(tmp_path)), maxsize=3, batch_size=1)
    q.start()
    dropped0 = val("safegene_judge_queue_dropped_total")
    item = JudgeItem(("q", "base", ""), "p", "r")
    assert q.submit(item)
    assert _wait_for(gate.entered, 60)  # the judge process holds one item; the queue itself is empty again
    t0 = time.perf_counter()
    results = [q.submit(item) for _ in range(10)]
    # never blocks: a blocking put would wait for the held item, i.e. the judge's 30 s; 5 s is slack for a busy CI
    assert time.perf_counter() - t0 < 5.0
    assert results.count(True) == 3 and results.count(False) == 7
    assert q.dropped == 7
    assert val("safegene_judge_queue_dropped_total") == dropped0 + 7
    assert val("safegene_judge_queue_depth") == 3
    gate.release.touch()
    assert q.drain(30)
    q.stop()
    assert q.processed == 4


def broken_judges() -> list:
    raise RuntimeError("no weights")


def test_a_judge_that_fails_to_load_does_not_raise_into_serving():
    q = JudgeQueue(broken_judges, maxsize=2)
    q.start()
    assert q.ready.wait(60)
    assert "no weights" in (q.error or "")
    assert val("safegene_judges_ready") == 0
    assert q.submit(JudgeItem(("x", "base", ""), "p", "r"))
    assert q.drain(10)
    q.stop()


def test_judges_run_in_another_process_at_lower_priority():
    q = JudgeQueue(partial(fixed_judges, "x"), maxsize=2)
    q.start()
    assert q.ready.wait(60) and q.error is None
    assert val("safegene_judges_ready") == 1
    import os

    import psutil

    child = psutil.Process(q.pid)
    assert child.pid != os.getpid() and child.nice() > psutil.Process().nice()
    q.stop()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_metric_names_match_the_contract():
    names = {c._name for c in (M.REQUESTS, M.PROMPT_TOKENS, M.COMPLETION_TOKENS, M.LATENCY, M.TTFT, M.JUDGED,
                               M.REFUSALS, M.HARMFUL, M.OVER_REFUSALS, M.PROMPTS_HARMFUL, M.JUDGE_LATENCY,
                               M.QUEUE_DROPPED, M.QUEUE_DEPTH, M.JUDGES_READY, M.JUDGE_ERRORS, M.REGISTRY_UNAVAILABLE,
                               M.ADAPTER_INFO)}
    assert names == {
        "safegene_requests", "safegene_prompt_tokens", "safegene_completion_tokens",
        "safegene_request_latency_seconds", "safegene_time_to_first_token_seconds", "safegene_judged",
        "safegene_refusals", "safegene_harmful_responses", "safegene_over_refusals",
        "safegene_prompts_judged_harmful", "safegene_judge_latency_seconds", "safegene_judge_queue_dropped",
        "safegene_judge_queue_depth", "safegene_judges_ready", "safegene_judge_errors",
        "safegene_registry_unavailable", "safegene_adapter_info",
    }
    assert M.REQUESTS._labelnames == ("model", "variant", "task", "status")
    assert M.HARMFUL._labelnames == ("model", "variant", "task", "judge")
    assert M.ADAPTER_INFO._labelnames == ("model", "variant", "task", "task_version", "safety_version",
                                          "coefficients_hash", "mode")
