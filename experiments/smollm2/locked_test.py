"""Issues 21/22: the locked test of the frozen procedures on the demo family (run once; every run is recorded).

    python -m experiments.smollm2.locked_test plan      # what the test evaluates, and what is not built yet
    python -m experiments.smollm2.locked_test run       # serve everything, evaluate on the TEST sets, decide
    python -m experiments.smollm2.locked_test decide    # the decision again, from the saved responses
    python -m experiments.smollm2.locked_test run --smoke 4   # a dress rehearsal on VALIDATION sets (4 prompts each)
    python -m experiments.smollm2.evidence bundle --only test-locked   # then commit results/ with docs/test-runs.jsonl

What is frozen (:data:`PROCEDURE`, written before any of it met a test set): SafeGene v2's default procedure
``v2a`` with seeds 0, 1, 2 (``experiments.smollm2.v2_sweep cal v2a --seed k``: other shots, other calibration seed),
and every baseline of :data:`.baselines.STUDY` as tuned on validation (``experiments.smollm2.baselines tune``;
RESTA's DARE masks drawn again with seeds 1 and 2 at the chosen knobs), each adapter of the family, A, and each
adapter alone. All of them are served at once by one server as the demo serves them (stacked LoRAs on A, fp32,
greedy, 32 tokens) and measured by ``safegene eval --test-run`` (recorded in ``docs/test-runs.jsonl``) on
HarmBench test standard (159), rho over-refusal (150) and each task's 200 test items, both judges; then
``safegene decide`` (paired tests over prompts, seeds averaged per prompt). ``run`` refuses to start until every
piece is built, so the test is never run on a part of the procedure; it resumes from the saved responses.

A server serves one ``+safegene`` variant per task, so seeds 1 and 2 are served as tasks ``<adapter>-seed<k>``
and a baseline as the plain task ``<adapter>-<baseline>``; ``names.json`` maps those served names to the names the
decision rule reads (``<adapter>+safegene-seed<k>``, ``<adapter>+<baseline>[-seed<k>]``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from safegene_runtime.paths import safegene_home
from safegene_runtime.prompts import write_jsonl

from . import baselines, v2_sweep
from .evaluate import eval_cli
from .family import family_server, family_tasks
from .run import log
from .tasks import generate, task_file_rows, write_val

REPO = Path(__file__).resolve().parents[2]
FAMILY = REPO / "assets" / "smollm2"
OUT = safegene_home() / "experiments" / "smollm2" / "locked-test"

#: the frozen procedure (2026-12-03), recorded with every test run
PROCEDURE: dict[str, Any] = {
    "safegene": "v2a", "seeds": [0, 1, 2], "baselines": list(baselines.STUDY), "seeded_baselines": ["resta_dare"],
    "harmful": "harmbench-test-standard", "benign": "rho-overrefusal", "task_items": 200, "max_tokens": 32,
}
TEST_RUN = ("issues 21/22 locked test, frozen 2026-12-03 (experiments/smollm2/locked_test.py PROCEDURE): SafeGene "
            "v2a seeds 0-2 and the validation-tuned baselines of experiments/smollm2/baselines.py STUDY on the demo "
            "family, served stacked (fp32, greedy, 32 tokens)")


def pieces(assets: Path = FAMILY, sweep: Path = v2_sweep.OUT, tuned: Path = baselines.OUT
           ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every served task entry of the test (name, adapter, source folder, coefficients or None, variants, the
    names the rule reads) and what is missing."""
    entries, missing = [], []
    for name in family_tasks(assets):
        for k in PROCEDURE["seeds"]:
            coeffs = v2_sweep.sweep_dir(sweep, PROCEDURE["safegene"], k) / name / "coefficients.json"
            if not coeffs.is_file():
                missing.append(f"{name}: v2a seed {k} (python -m experiments.smollm2.v2_sweep cal v2a --seed {k})")
            served = name if k == 0 else f"{name}-seed{k}"
            entries.append({"name": served, "adapter": name, "path": assets / "tasks" / name,
                            "coefficients": coeffs, "variants": ["plain", "safe"] if k == 0 else ["safe"],
                            "rename": {f"{served}+safegene": f"{name}+safegene-seed{k}"}})
        for b in PROCEDURE["baselines"]:
            folder = baselines.tuned_dir(tuned, b, name)
            if not (folder / "manifest.json").is_file():
                missing.append(f"{name}: baseline {b} (python -m experiments.smollm2.baselines tune --method {b})")
            seeds = PROCEDURE["seeds"] if b in PROCEDURE["seeded_baselines"] else [None]
            for k in seeds:
                served = f"{name}-{b.replace('_', '-')}" + (f"-seed{k}" if k else "")
                entries.append({"name": served, "adapter": name, "path": folder, "coefficients": None,
                                "variants": ["plain"], "redraw_seed": k if k else None,
                                "rename": {served: f"{name}+{b}" + (f"-seed{k}" if k is not None else "")}})
    return entries, missing


def stage(entries: list[dict[str, Any]], root: Path, assets: Path = FAMILY) -> list[dict[str, Any]]:
    """Copies of every served adapter under ``root`` (the server's adapter root: it takes no symbolic links), RESTA's
    other seeds drawn at the tuned knobs; the server's task entries."""
    from safegene_runtime.baselines.resta import resta_dare

    tasks = []
    for e in entries:
        dst = root / e["name"]
        if not dst.is_dir():
            tmp = root / f".{e['name']}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if e.get("redraw_seed"):
                knobs = json.loads((e["path"] / "manifest.json").read_text())["tuning"]["knobs"]
                resta_dare(assets / "tasks" / e["adapter"], assets / "safety", float(knobs["lam"]), p=float(knobs["p"]),
                           seed=e["redraw_seed"], out=tmp)
            else:
                shutil.copytree(e["path"], tmp, ignore=shutil.ignore_patterns("coefficients.json"))
            if e["coefficients"] is not None:
                shutil.copyfile(e["coefficients"], tmp / "coefficients.json")
            tmp.rename(dst)
        tasks.append({"name": e["name"], "path": str(dst), "variants": e["variants"],
                      **({"coefficients": str(dst / "coefficients.json")} if e["coefficients"] else {})})
    return tasks


def write_task_tests(folder: Path, assets: Path = FAMILY) -> dict[str, Path]:
    """``<task>-test.jsonl``: each task's first ``task_items`` held-out items (tasks.generate's test rows)."""
    out = {}
    for task in sorted(set(family_tasks(assets).values())):
        path = folder / f"{task}-test.jsonl"
        if not path.is_file():
            write_jsonl(path, task_file_rows(generate(task)[1][: PROCEDURE["task_items"]], f"{task}-test"))
        out[task] = path
    return out


def renames(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {k: v for e in entries for k, v in e["rename"].items()}


def run(out: Path, assets: Path = FAMILY, sweep: Path = v2_sweep.OUT, tuned: Path = baselines.OUT,
        smoke: int | None = None) -> None:
    """Serve every piece and measure it on the TEST sets (recorded); ``smoke``: the same server and flow on the
    VALIDATION sets, ``smoke`` prompts of each, nothing recorded (a dress rehearsal of the staging, the server with
    every adapter and the renames, before the one real run)."""
    entries, missing = pieces(assets, sweep, tuned)
    if missing:
        raise SystemExit("the frozen procedure is not built yet, so the test does not run:\n  " + "\n  ".join(missing))
    out = out.resolve()
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    tasks = stage(entries, out / "adapters", assets)
    if smoke:
        tests = {t: write_val(t, out) for t in sorted(set(family_tasks(assets).values()))}
        harmful, benign, limit, test_run = "harmful-val", "edgy-benign-val", smoke, None
    else:
        tests = write_task_tests(out)
        harmful, benign, limit, test_run = PROCEDURE["harmful"], PROCEDURE["benign"], None, TEST_RUN
    (out / "names.json").write_text(json.dumps(renames(entries), indent=1) + "\n")
    (out / "procedure.json").write_text(json.dumps(PROCEDURE, indent=1) + "\n")
    kinds = family_tasks(assets)

    def edit(cfg: dict, demo_cfg: dict) -> None:
        cfg["tasks"], cfg["adapter_root"] = tasks, str(out / "adapters")
        cfg["engine"]["max_cpu_loras"] = len(tasks) + sum("safe" in t["variants"] for t in tasks)

    with family_server(assets, out / "server.log", label="locked-test server", edit=edit,
                       timeout=1800) as (server, cfg):
        # served name -> the task its adapter was trained on (A: None)
        served = {cfg["base"]["served_name"]: None} | {
            f"{e['name']}+safegene" if v == "safe" else e["name"]: kinds[e["adapter"]]
            for e in entries for v in e["variants"]}
        eval_cli(server.base_url, ",".join(served), out / "safety", harmful=harmful, benign=benign, task=None,
                 limit=limit, max_tokens=PROCEDURE["max_tokens"], log=log,
                 test_run=test_run and test_run + ": harmful and over-refusal sets")
        for task, path in tests.items():
            mine = [m for m, t in served.items() if t == task]
            eval_cli(server.base_url, ",".join(mine), out / f"task-{task}", harmful=None, benign=None,
                     task=path, limit=limit, max_tokens=PROCEDURE["max_tokens"], log=log,
                     test_run=test_run and test_run + f": task {task} test items")
    decide(out)


def decide(out: Path) -> None:
    """``safegene decide`` over the saved verdicts, both judges; decision.md and decision.json in ``out``."""
    from safegene_runtime.cli import main as cli

    folders = [str(out / "safety")] + [str(p) for p in sorted(out.glob("task-*")) if p.is_dir()]
    code = cli(["decide", *folders, "--rename", str(out / "names.json"),
                "--baselines", ",".join(PROCEDURE["baselines"]), "--seeds", ",".join(map(str, PROCEDURE["seeds"])),
                "--base", "smollm2", "--out", str(out / "decision.md"), "--json", str(out / "decision.json")])
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("plan", "run", "decide"))
    ap.add_argument("--out", type=Path, default=None, help=f"work folder (default {OUT}; with --smoke, {OUT}-smoke)")
    ap.add_argument("--smoke", type=int, metavar="N",
                    help="run: a dress rehearsal on the VALIDATION sets, N prompts of each, nothing recorded")
    args = ap.parse_args(argv)
    if args.smoke is not None and (args.command != "run" or args.smoke < 1):
        ap.error("--smoke N (N >= 1) goes with run")
    out = args.out or (OUT.with_name(OUT.name + "-smoke") if args.smoke else OUT)
    if args.command == "plan":
        entries, missing = pieces()
        for e in entries:
            print(f"{e['name']:<32} {', '.join(e['variants']):<12} -> {', '.join(e['rename'].values())}")
        print(f"\n{len(entries)} task entries; {len(missing)} pieces missing" + (":" if missing else ""))
        for m in missing:
            print(f"  {m}")
        return 1 if missing else 0
    if args.command == "run":
        run(out, smoke=args.smoke)
    else:
        decide(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
