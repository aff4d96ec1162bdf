"""The evaluation harness: every prompt set against every model on any OpenAI-compatible endpoint.

Steps, each reproducible from files in ``--out``:

1. **Generate** (resumable): each finished chat completion (temperature 0) is appended as one JSON line to
   ``responses.jsonl`` (model, role, set, id, prompt, response, finish). On restart, rows already there are
   skipped, so an interrupted run continues where it stopped; a torn last line is cut off first.
2. **Judge**: the refusal judge (phrase rules) on every response, the response-harm judge (does the response give
   substantive help?) on the harmful set, optionally an LLM judge on the harmful set; task answers are scored by
   the set's scorer. Per-row verdicts go to ``judged.jsonl``.
3. **Report**: ``results.json`` (per model: k, N, rate, Wilson 95% CI), ``report.md``, ``safety_utility.png``.

The numbers are a pure function of ``responses.jsonl`` and the sets (see :func:`compute_results`), which is what
the end-to-end test recounts.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text
from .datasets import DatasetError, PromptSet, dedup, find_overlap
from .digests import prompt_set_digest
from .judges import RefusalJudge, build_judge
from .outcomes import OUTCOMES
from .report import markdown_table, plot_safety_utility, rate
from .scorers import score

RESPONSES = "responses.jsonl"
JUDGED = "judged.jsonl"
RESULTS = "results.json"
REPORT = "report.md"
PLOT = "safety_utility.png"
RUN = "run.json"
SCHEMA = "safegene.eval/v1"
ROLES = ("harmful", "benign", "task")


class EvalError(ValueError):
    """The run cannot proceed (bad endpoint, failed requests, mismatched resume); the message says what to do."""


@dataclass
class EvalConfig:
    endpoint: str
    models: list[str]
    out: Path
    harmful: PromptSet | None = None
    benign: PromptSet | None = None
    task: PromptSet | None = None
    api_key: str | None = None
    max_tokens: int = 256
    #: requests in flight; at least the server's batch (engine max_num_seqs), or the engine idles between requests
    concurrency: int = 32
    timeout: float = 120.0
    retries: int = 3
    system_prompt: str | None = None
    llm_judge: str | None = None
    #: the judge behind the second harmful rate (``response_harmful_rate``); None: phrase-judge rate only
    response_judge: str | None = "response_harm"
    progress: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)

    def sets(self) -> dict[str, PromptSet]:
        return {role: s for role, s in (("harmful", self.harmful), ("benign", self.benign), ("task", self.task))
                if s is not None}


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (row["model"], row["role"], row["set"], row["id"])


def read_responses(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of ``responses.jsonl``. With ``repair``, a torn last line (interrupted write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(cut)
        data = data[:cut]
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{i}: not valid JSON ({e.msg}); fix or remove that line and rerun") from e
    return rows


class _Client:
    """Minimal OpenAI chat-completions client over httpx with retries (429/5xx/connection errors)."""

    def __init__(self, cfg: EvalConfig) -> None:
        import httpx  # lazy: the HTTP client (~0.1 s to import) only when requests are sent

        headers = {"Authorization": f"Bearer {cfg.api_key or 'EMPTY'}"}
        self.http = httpx.Client(base_url=cfg.endpoint.rstrip("/"), headers=headers, timeout=cfg.timeout,
                                 limits=httpx.Limits(max_connections=max(cfg.concurrency, 1) * 2))
        self.cfg = cfg

    def complete(self, model: str, prompt: str) -> dict[str, Any]:
        import httpx  # lazy: as in __init__ (already loaded by then)

        msgs = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else [])
        msgs.append({"role": "user", "content": prompt})
        body = {"model": model, "messages": msgs, "temperature": 0, "max_tokens": self.cfg.max_tokens,
                **self.cfg.extra_body}
        last = ""
        for attempt in range(self.cfg.retries + 1):
            t0 = time.monotonic()
            try:
                r = self.http.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    data = r.json()
                    choice = data["choices"][0]
                    return {"response": choice["message"].get("content") or "",
                            "finish": choice.get("finish_reason"), "usage": data.get("usage"),
                            "latency_s": round(time.monotonic() - t0, 4)}
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in (408, 409, 429) and r.status_code < 500:
                    break  # a client error will not fix itself (unknown model, bad key)
            if attempt < self.cfg.retries:
                time.sleep(min(8.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
        raise EvalError(f"model {model!r}: {last}")

    def close(self) -> None:
        self.http.close()


def _check_sets(sets: dict[str, PromptSet]) -> dict[str, PromptSet]:
    """De-duplicate each set (normalised text) and refuse a prompt that is both harmful and benign."""
    out = {}
    for role, s in sets.items():
        (clean,), dropped = dedup([s])
        if dropped:
            print(f"note: {s.name}: dropped {len(dropped)} duplicate prompt(s) (normalised text)")
        ids = [it.id for it in clean.items]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"set {s.name!r} has repeated item ids")
        if role == "task" and any(it.answer is None for it in clean.items):
            raise DatasetError(f"task set {s.name!r}: every item needs an answer")
        out[role] = clean
    if "harmful" in out and "benign" in out:
        both = find_overlap([out["benign"]], [out["harmful"]])
        if both:
            raise DatasetError(f"{len(both)} prompt(s) are in both the harmful and the benign set, e.g. "
                               f"{both[0]['prompt'][:80]!r}")
    return out


def _run_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What changes a response: a resumed run must match these or its rows would mix two settings."""
    return {"endpoint": cfg.endpoint, "max_tokens": cfg.max_tokens, "temperature": 0,
            "system_prompt": cfg.system_prompt, "extra_body": cfg.extra_body}


def generate(cfg: EvalConfig, sets: dict[str, PromptSet]) -> dict[str, int]:
    """Fill ``responses.jsonl`` with every (model, set item) not already there. Returns counts."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    run_file = cfg.out / RUN
    settings = _run_settings(cfg)
    if run_file.is_file():
        prev = json.loads(run_file.read_text())
        diff = {k: (prev.get(k), v) for k, v in settings.items() if k != "endpoint" and prev.get(k) != v}
        if diff:
            raise EvalError(f"{cfg.out} holds responses generated with other settings {diff}; "
                            "use another --out (or delete it) so two settings never mix")
    atomic_write_json(run_file, settings)
    path = cfg.out / RESPONSES
    done = {_key(r) for r in read_responses(path, repair=True)}
    todo = [(m, role, s.name, it) for m in cfg.models for role, s in sets.items() for it in s.items
            if (m, role, s.name, it.id) not in done]
    counts = {"total": sum(len(s) for s in sets.values()) * len(cfg.models), "cached": 0, "new": 0, "failed": 0}
    counts["cached"] = counts["total"] - len(todo)
    if not todo:
        return counts
    client = _Client(cfg)
    lock = threading.Lock()
    errors: list[str] = []
    bar = None
    if cfg.progress:
        from tqdm import tqdm  # lazy: only with a progress bar

        bar = tqdm(total=len(todo), desc="eval requests", unit="req", initial=0, dynamic_ncols=True)
    try:
        pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency))
        with open(path, "a", encoding="utf-8") as f:
            futs = {pool.submit(client.complete, m, it.prompt): (m, role, name, it) for m, role, name, it in todo}
            try:
                completed = as_completed(futs)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            for fut in _guard(completed, pool):
                m, role, name, it = futs[fut]
                try:
                    res = fut.result()
                except Exception as e:
                    with lock:
                        counts["failed"] += 1
                        errors.append(f"{m}/{name}/{it.id}: {e}")
                else:
                    row = {"model": m, "role": role, "set": name, "id": it.id, "prompt": it.prompt, **res}
                    with lock:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        f.flush()
                        counts["new"] += 1
                if bar is not None:
                    bar.update(1)
            os.fsync(f.fileno())
        pool.shutdown(wait=True)
    finally:
        if bar is not None:
            bar.close()
        client.close()
    if errors:
        raise EvalError(f"{len(errors)} of {len(todo)} requests failed (first: {errors[0]}); "
                        f"the {counts['new']} that succeeded are saved in {path}: rerun the same command to retry")
    return counts


def _guard(it, pool: ThreadPoolExecutor):
    """Iterate futures; on Ctrl-C (or any error) cancel what has not started, so an interrupted run stops now."""
    try:
        yield from it
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def judge_rows(rows: list[dict[str, Any]], sets: dict[str, PromptSet], *, llm_judge: str | None = None,
               response_judge: str | None = None) -> list[dict[str, Any]]:
    """Per-row verdicts: refusal label for every row, the task score for task rows, and on harmful rows the
    response judge's label and score (``response_judge``, e.g. "response_harm") and the LLM label, if asked."""
    items = {(role, s.name, it.id): it for role, s in sets.items() for it in s.items}
    refusal = RefusalJudge()
    verdicts = refusal.judge_batch([r["prompt"] for r in rows], [r["response"] for r in rows])
    out = []
    for r, v in zip(rows, verdicts):
        j = {"model": r["model"], "role": r["role"], "set": r["set"], "id": r["id"],
             "refusal": v.label, "refusal_rule": v.details.get("rule"), "empty": bool(v.details.get("empty"))}
        if r["role"] == "task":
            it = items[(r["role"], r["set"], r["id"])]
            scorer = sets["task"].scorer or "exact"
            ok, got = score(scorer, r["response"], it.answer or "", it.labels)
            j.update({"correct": ok, "extracted": got, "answer": it.answer, "scorer": scorer})
        out.append(j)
    harmful_idx = [i for i, r in enumerate(rows) if r["role"] == "harmful"]
    if response_judge and harmful_idx:
        vs = build_judge(response_judge).judge_batch([rows[i]["prompt"] for i in harmful_idx],
                                                     [rows[i]["response"] for i in harmful_idx])
        for i, v in zip(harmful_idx, vs):
            out[i]["response_judge"] = v.label
            out[i]["response_judge_score"] = round(float(v.score), 4)
    if llm_judge:
        judge = build_judge(llm_judge)
        idx = harmful_idx
        if idx:
            vs = judge.judge_batch([rows[i]["prompt"] for i in idx], [rows[i]["response"] for i in idx])
            for i, v in zip(idx, vs):
                out[i]["llm"] = v.label
    return out


def compute_results(rows: list[dict[str, Any]], sets: dict[str, PromptSet], models: list[str],
                    judged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-model rates from judged rows (only rows of the current sets and models count)."""
    wanted = {(role, s.name, it.id) for role, s in sets.items() for it in s.items}
    per: dict[str, dict[str, Any]] = {}
    for m in models:
        js = [j for j in judged if j["model"] == m and (j["role"], j["set"], j["id"]) in wanted]
        harm = [j for j in js if j["role"] == "harmful"]
        ben = [j for j in js if j["role"] == "benign"]
        task = [j for j in js if j["role"] == "task"]
        res: dict[str, Any] = {}
        if "harmful" in sets:
            for key in ("harmful_response_rate", "refusal_rate"):
                res[key] = rate(*OUTCOMES[key].counts(harm))
            if any("response_judge" in j for j in harm):
                res["response_harmful_rate"] = rate(*OUTCOMES["response_harmful_rate"].counts(harm))
            if any("llm" in j for j in harm):
                res["llm_unsafe_rate"] = rate(*OUTCOMES["llm_unsafe_rate"].counts(harm))
                res["llm_unknown"] = len(harm) - res["llm_unsafe_rate"]["n"]
        if "benign" in sets:
            res["over_refusal_rate"] = rate(*OUTCOMES["over_refusal_rate"].counts(ben))
        if "task" in sets:
            res["task_accuracy"] = rate(*OUTCOMES["task_accuracy"].counts(task))
        res["empty_responses"] = {role: sum(j["empty"] for j in js if j["role"] == role) for role in sets}
        expected = {role: len(s) for role, s in sets.items()}
        got = {role: sum(j["role"] == role for j in js) for role in sets}
        if got != expected:
            res["incomplete"] = {"expected": expected, "got": got}
        per[m] = res
    return per


def write_reports(cfg: EvalConfig, sets: dict[str, PromptSet]) -> dict[str, Any]:
    """Judge ``responses.jsonl`` and write results.json, judged.jsonl, report.md, safety_utility.png."""
    wanted = {(m, role, s.name, it.id) for m in cfg.models for role, s in sets.items() for it in s.items}
    rows_by_key = {}
    for r in read_responses(cfg.out / RESPONSES):
        if _key(r) in wanted:
            rows_by_key[_key(r)] = r  # a key written twice (two concurrent runs): the last one wins, once
    rows = list(rows_by_key.values())
    judged = judge_rows(rows, sets, llm_judge=cfg.llm_judge, response_judge=cfg.response_judge)
    results = {
        "schema": SCHEMA,
        "created_by": f"safegene {__version__}",
        "config": {**_run_settings(cfg), "models": cfg.models, "refusal_judge": "refusal (phrase rules)",
                   "response_judge": cfg.response_judge,
                   "llm_judge": cfg.llm_judge.split("@")[0] if cfg.llm_judge else None},
        "sets": {role: {"name": s.name, "n": len(s), "digest": prompt_set_digest(s.prompts), "scorer": s.scorer}
                 for role, s in sets.items()},
        "models": compute_results(rows, sets, cfg.models, judged),
        "files": {"responses": RESPONSES, "judged": JUDGED, "report": REPORT, "plot": PLOT},
    }
    atomic_write_text(cfg.out / JUDGED, "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
    atomic_write_json(cfg.out / RESULTS, results)
    atomic_write_text(cfg.out / REPORT, markdown_table(results))
    plot_safety_utility(results, cfg.out / PLOT)
    return results


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Generate (resuming), judge and report. Returns the results dict."""
    if not cfg.models:
        raise EvalError("no models given (--models m1,m2,...)")
    if not cfg.sets():
        raise EvalError("nothing to evaluate: give at least one of --harmful, --benign, --task")
    sets = _check_sets(cfg.sets())
    counts = generate(cfg, sets)
    results = write_reports(cfg, sets)
    results["requests"] = counts
    return results
