"""The safety gate on ``POST /admin/adapters``: a built version is evaluated through the live engine before it serves.

What a gate run does (the registry calls :meth:`GateRunner.run` between the build job and the atomic swap):

1. load the version's plain and safe folders under **staging names** (``<served name>.gate-<job id>``). Clients
   cannot address them: the middleware admits only names the registry serves (404 otherwise) and ``/v1/models``
   lists only names with a lineage. The gate's own requests reach the engine through an in-process ASGI call that
   the middleware recognises by a scope key no HTTP client can set (:func:`server.app.internal_completer`);
2. send the gate's validation sets (harmful, edgy-benign, and the adapter's own task shots when the registration
   names them) to the base and both staging names, at most ``gate.concurrency()`` requests in flight (a share of
   the engine's batch, so client traffic keeps the rest), temperature 0, ``gate.sets.max_tokens`` tokens;
3. judge with the eval harness's own functions (``judge_rows``, ``compute_results``) and the configured harm judge
   (:func:`safegene_runtime.gate.harm_judged`: any judge ``build_judge`` knows, by name), decide with
   :func:`safegene_runtime.gate.decide`;
4. write ``gate.json`` / ``gate.md`` (+ the responses and verdicts) as a content-addressed artifact whose manifest
   lineage names the variant folders it judged, and export the metrics.

The staging names are unloaded whatever happens (verdict, error, cancel). The base model's responses depend only
on the sets and the budget, so they are computed once per server process and reused.

**Early start** (:class:`EarlyGate`, ``gate.early_start``, off by default: on a 2-core CPU machine the engine and the
calibration slowed each other several-fold): a registration that calibrates at load time spends most of its time in the build
worker's calibration, which only the safe form needs. The worker reports the validated plain snapshot before it
calibrates (``server.jobs.PLAIN_READY``), and the gate loads it under its staging name and evaluates the base and the
plain form then, beside the calibration (the engine decodes on its core while the worker calibrates); the gate run
proper evaluates only the safe form. Same requests, same rows, same decision: only the order changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from safegene_runtime.artifacts import ArtifactWriter
from safegene_runtime.datasets import PromptSet, load_file, resolve
from safegene_runtime.digests import json_digest, prompt_set_digest
from safegene_runtime.evaluate import compute_results, judge_rows
from safegene_runtime.gate import GateDecision, decide, failing_samples, harm_judged, write_report

from . import metrics as M
from .config import ServerConfig
from .jobs import Job, JobCancelled
from .records import TaskRecord, served_name

log = logging.getLogger("safegene.server.gate")

#: (model, prompt, max_tokens) -> {"response", "finish"}: one chat completion through the live engine
Complete = Callable[[str, str, int], Awaitable[dict[str, Any]]]
#: what a staging name appends to a served name (the job id follows)
STAGING_MARK = ".gate-"


class EngineLoader(Protocol):
    """What the gate needs from the engines (the registry's EngineOps): load and unload a folder under a name."""

    async def load(self, name: str, path: Path) -> None: ...  # pragma: no cover - protocol
    async def unload(self, name: str) -> None: ...  # pragma: no cover - protocol


@dataclass
class GateOutcome:
    decision: GateDecision
    report: dict[str, Any]
    path: Path
    id: str
    seconds: float


def staging_names(rec: TaskRecord, job: Job) -> dict[str, str]:
    """The hidden name of each variant during its gate run."""
    return {variant: staging_name(v.served_name, job) for variant, v in rec.variants.items()}


def staging_name(served: str, job: Job) -> str:
    return f"{served}{STAGING_MARK}{job.id}"


class EarlyGate:
    """The base's and the plain form's rows of one job's gate run, evaluated while the build worker still
    calibrates (module docstring). :meth:`start` is the build's ``on_plain`` callback; :meth:`close` (always called
    by the registry) cancels what is still running and unloads the staging name."""

    def __init__(self, runner: "GateRunner", job: Job, task: str, engine: EngineLoader, task_file: Path | None):
        self.runner, self.job, self.task, self.engine, self.task_file = runner, job, task, engine, task_file
        self.folder: Path | None = None
        self.version: str | None = None
        self.loaded: list[str] = []
        self._run: asyncio.Task | None = None

    def start(self, folder: Path, version: str) -> None:
        if self._run is None:
            self.folder, self.version = folder, version
            self._run = asyncio.ensure_future(self._evaluate())

    async def _evaluate(self) -> tuple[dict[str, PromptSet], list[dict[str, Any]]]:
        assert self.folder is not None
        sets = await asyncio.to_thread(self.runner.sets, self.task_file)
        self.runner.begin(self.job)
        name = staging_name(served_name(self.task, "plain"), self.job)
        self.job.gate["staging"] = {"plain": name}  # type: ignore[index]
        await self.engine.load(name, self.folder)
        self.loaded.append(name)
        rows = await self.runner.evaluate(self.job, sets, {self.runner.cfg.served_name: None,
                                                           f"{self.task}@{self.version}": name})
        return sets, rows

    def covers(self, rec: TaskRecord) -> bool:
        """Whether the early rows are the plain form ``rec`` would serve (same folder and version)."""
        plain = rec.variants.get("plain")
        return (self._run is not None and plain is not None and plain.mode == "lora" and self.version == rec.version
                and self.folder is not None and Path(plain.path) == self.folder)

    async def rows(self) -> tuple[dict[str, PromptSet], list[dict[str, Any]]]:
        assert self._run is not None
        return await self._run

    async def close(self) -> None:
        if self._run is not None and not self._run.done():
            self._run.cancel()
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)
        for name in self.loaded:
            try:
                await self.engine.unload(name)
            except Exception:  # pragma: no cover - the name goes away with the engine either way
                log.exception("unloading staging name %s failed", name)
        self.loaded.clear()


class GateRunner:
    """Runs gates for one server; holds the completer (set once the app exists) and the base responses' cache."""

    def __init__(self, cfg: ServerConfig, complete: Complete, max_num_seqs: int | None,
                 clients: Callable[[], int] = lambda: 0):
        assert cfg.gate is not None
        self.cfg = cfg
        self.spec = cfg.gate
        self.complete = complete
        #: gate requests in flight while a client request is (the share), and while none is (the idle share)
        self.concurrency = cfg.gate.concurrency(max_num_seqs)
        self.idle_concurrency = cfg.gate.idle_concurrency(max_num_seqs)
        #: client requests in flight now (the registry's admissions; the gate's own bypass admission)
        self.clients = clients
        self._base_rows: dict[str, list[dict[str, Any]]] = {}

    def sets(self, task_file: Path | None) -> dict[str, PromptSet]:
        s = self.spec.sets
        out = {"harmful": resolve(s.harmful, kind="harmful").head(self.spec.max_prompts),
               "benign": resolve(s.benign, kind="benign").head(self.spec.max_prompts)}
        if task_file is not None:
            out["task"] = load_file(task_file, kind="task").head(self.spec.max_prompts)
        return out

    def early(self, job: Job, task: str, engine: EngineLoader, task_file: Path | None) -> EarlyGate:
        return EarlyGate(self, job, task, engine, task_file)

    def begin(self, job: Job) -> None:
        """The job's gate view (the registry makes it when the job starts; an early start and the run share its
        progress, so what is already there stays)."""
        if job.gate is None:
            job.gate = {"verdict": None, "report": None}
        job.gate.setdefault("staging", {})
        job.gate.setdefault("progress", {"done": 0, "total": 0})
        job.gate.update(concurrency=self.concurrency, idle_concurrency=self.idle_concurrency)

    async def run(self, job: Job, rec: TaskRecord, engine: EngineLoader, *, task_file: Path | None,
                  calibration: dict[str, Any] | None, early: EarlyGate | None = None) -> GateOutcome:
        """Evaluate ``rec`` (both variants built) against the base; raises :class:`JobCancelled` on a cancel.
        With ``early`` covering ``rec``'s plain form, its rows (base and plain) are awaited, not requested again."""
        t0 = time.monotonic()
        names = staging_names(rec, job)
        base = self.cfg.served_name
        labels = {"base": base, "plain": f"{rec.name}@{rec.version}", "safe": f"{rec.name}+safegene@{rec.version}"}
        self.begin(job)
        assert job.gate is not None
        job.gate["staging"] = names
        pre: list[dict[str, Any]] = []
        todo = {labels["base"]: None, labels["plain"]: names["plain"], labels["safe"]: names["safe"]}
        if early is not None and early.covers(rec):
            job.update("gating", "evaluating base and plain (started while the safe form was calibrated)")
            sets, pre = await early.rows()
            todo = {labels["safe"]: names["safe"]}
        else:
            if early is not None:  # it staged another folder under this job's plain staging name: unload it first
                await early.close()
            sets = await asyncio.to_thread(self.sets, task_file)
        loaded: list[str] = []
        try:
            job.update("gating", "loading the version under hidden staging names")
            for variant, name in names.items():
                if name in todo.values():
                    await engine.load(name, Path(rec.variants[variant].path))
                    loaded.append(name)
            job.update(stage=f"evaluating {', '.join(v for v, label in labels.items() if label in todo)} on the "
                             "gate's validation sets")
            rows = pre + await self.evaluate(job, sets, todo)
        finally:
            for name in loaded:
                try:
                    await engine.unload(name)
                except Exception:  # pragma: no cover - the name goes away with the engine either way
                    log.exception("unloading staging name %s failed", name)
        job.update(stage="judging and deciding")
        decision, results, judged = await asyncio.to_thread(self._decide, rows, sets, labels)
        samples = failing_samples(judged, rows, decision)
        eval_results = {
            "sets": {role: {"name": s.name, "n": len(s), "digest": prompt_set_digest(s.prompts), "scorer": s.scorer}
                     for role, s in sets.items()},
            "config": {"temperature": 0, "max_tokens": self.spec.sets.max_tokens,
                       "harm_judge": self.spec.sets.harm_judge,
                       "refusal_judge": "refusal (phrase rules)", "concurrency": self.concurrency,
                       "capacity_share": self.spec.capacity_share, "idle_concurrency": self.idle_concurrency,
                       "idle_share": self.spec.idle_share, "max_prompts": self.spec.max_prompts,
                       "models": labels, "job": job.id, "calibration": calibration},
            "models": results,
        }
        cal_digest = json_digest({"calibration": calibration, "coefficients_hash": rec.coefficients_hash})[:12]
        path, rid, report = await asyncio.to_thread(self._write, rec, decision, eval_results, samples, rows, judged,
                                                    cal_digest)
        seconds = time.monotonic() - t0
        export_metrics(rec.name, decision, {variant: results[label] for variant, label in labels.items()}, seconds)
        return GateOutcome(decision, report, path, rid, seconds)

    async def evaluate(self, job: Job, sets: dict[str, PromptSet], models: dict[str, str | None]
                       ) -> list[dict[str, Any]]:
        """Every (model, item) through the engine; the base's rows (``models``' None entry, when there is one) from
        the cache. Adds its requests to the job's progress.

        ``idle_concurrency`` workers take the requests in turn; worker i runs only while i < the current limit:
        ``concurrency`` while any client request is in flight, ``idle_concurrency`` while none is (checked before
        each request and every 0.1 s by a waiting worker), so client traffic finds at most the gate's share taken
        once the requests running when it arrived are done."""
        key = json_digest({"base": self.cfg.served_name, "max_tokens": self.spec.sets.max_tokens,
                           "sets": {r: [[it.id, it.prompt] for it in s.items] for r, s in sets.items()}})
        base_label = next((label for label, name in models.items() if name is None), None)
        todo = [(label, name or self.cfg.served_name, role, s.name, it) for label, name in models.items()
                if not (name is None and key in self._base_rows) for role, s in sets.items() for it in s.items]
        progress = job.gate["progress"]  # type: ignore[index]
        progress["total"] += len(todo)
        max_tokens = self.spec.sets.max_tokens
        queue = list(enumerate(todo))
        queue.reverse()  # pop() from the end: the requests go out in todo's order
        got: dict[int, dict[str, Any]] = {}

        def limit() -> int:
            return self.concurrency if self.clients() > 0 else self.idle_concurrency

        async def worker(i: int) -> None:
            while queue:
                if i >= limit():
                    await asyncio.sleep(0.1)
                    continue
                if job.cancel_requested:
                    raise JobCancelled(f"job {job.id} was cancelled during its gate run")
                n, (label, model, role, set_name, it) = queue.pop()
                res = await self.complete(model, it.prompt, max_tokens)
                progress["done"] += 1
                got[n] = {"model": label, "role": role, "set": set_name, "id": it.id, "prompt": it.prompt, **res}

        workers = [asyncio.ensure_future(worker(i)) for i in range(self.idle_concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        rows = [got[n] for n in range(len(todo))]
        if base_label is None:
            return rows
        if key in self._base_rows:
            rows += self._base_rows[key]
        else:
            self._base_rows = {key: [r for r in rows if r["model"] == base_label]}  # one entry: the current sets
        return rows

    def _decide(self, rows: list[dict[str, Any]], sets: dict[str, PromptSet], labels: dict[str, str]
                ) -> tuple[GateDecision, dict[str, Any], list[dict[str, Any]]]:
        judged = judge_rows(rows, sets)
        results = compute_results(rows, sets, list(labels.values()), judged)
        results = harm_judged(results, rows, self.spec.sets.harm_judge)
        decision = decide(results, base=labels["base"], plain=labels["plain"], safe=labels["safe"],
                          thresholds=self.spec.thresholds)
        return decision, results, judged

    def _write(self, rec: TaskRecord, decision: GateDecision, eval_results: dict[str, Any],
               samples: dict[str, Any], rows: list[dict[str, Any]], judged: list[dict[str, Any]], cal_digest: str
               ) -> tuple[Path, str, dict[str, Any]]:
        lineage = [{"role": variant, "path": v.path, "id": v.digest} for variant, v in rec.variants.items()]
        lineage.append({"role": "base", "path": str(self.cfg.base_model)})
        with ArtifactWriter(store=self.cfg.artifact_store / "gates", name=f"{rec.name}-{rec.version}-gate",
                            kind="gate_report", lineage=lineage) as w:
            assert w.tmp is not None
            report = write_report(w.tmp, decision, eval_results, samples=samples, calibration_digest=cal_digest)
            (w.tmp / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            (w.tmp / "judged.jsonl").write_text("".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judged))
            w.manifest.update(task={"name": rec.name, "version": rec.version}, verdict=decision.verdict)
        assert w.path is not None and w.id is not None
        return w.path, w.id, report


#: the numbers a gate run exports per variant (rates in [0, 1], like the serving metrics)
GATE_METRICS = ("harmful_response_rate", "over_refusal_rate", "task_accuracy")


def export_metrics(task: str, decision: GateDecision, results: dict[str, dict[str, Any]], seconds: float) -> None:
    """Runs by verdict, duration, and the last verdict's numbers for ``task``: ``results`` is variant (base, plain,
    safe) -> that model's eval results."""
    M.GATE_RUNS.labels(task=task, verdict=decision.verdict).inc()
    M.GATE_DURATION.observe(seconds)
    M.set_gate_last(task, decision.verdict, {
        (variant, metric): r[metric]["rate"] for variant, r in results.items() for metric in GATE_METRICS
        if isinstance(r.get(metric), dict) and r[metric].get("rate") is not None})
