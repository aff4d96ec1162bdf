"""Issues 21/22: the locked test of the frozen procedures on the demo family (run once; every run is recorded).

    python -m experiments.smollm2.locked_test plan      # what the test evaluates, and what is not built yet
    python -m experiments.smollm2.locked_test run       # serve everything, evaluate on the TEST sets, decide
    python -m experiments.smollm2.locked_test decide    # the decision again, from the saved responses
    python -m experiments.smollm2.locked_test run --smoke 4   # a dress rehearsal on VALIDATION sets (4 prompts each)
    python -m experiments.smollm2.locked_test save      # a session must stop mid-run: archive the responses, commit
    python -m experiments.smollm2.evidence bundle --only test-locked   # then commit results/ with docs/test-runs.jsonl

What is frozen (:data:`PROCEDURE`, written before any of it met a test set): SafeGene v2's default procedure
``v2a`` with seeds 0, 1, 2 (``experiments.smollm2.v2_sweep cal v2a --seed k``: other shots, other calibration seed;
seed 0 is the family's shipped ``coefficients.json``, seeds 1 and 2 are committed in ``results/smollm2/v2-sweep``),
and every baseline of :data:`.baselines.STUDY` as tuned on validation (``experiments.smollm2.baselines tune``, its
choices committed in ``results/smollm2/baseline-choices.json``: ``baselines rebuild`` builds them again in minutes,
each checked against its recorded content id; RESTA's DARE masks drawn again with seeds 1 and 2 at the chosen
knobs), each adapter of the family, A, and each adapter alone. All of them are served at once by one server as the demo serves them (stacked LoRAs on A, fp32,
greedy, 32 tokens) and measured by ``safegene eval --test-run`` (recorded in ``docs/test-runs.jsonl``) on
HarmBench test standard (159), rho over-refusal (150) and each task's 200 test items, both judges; then
``safegene decide`` (paired tests over prompts, seeds averaged per prompt). ``run`` refuses to start until every
piece is built, so the test is never run on a part of the procedure; it resumes from the saved responses, and a
run a session had to stop is archived by ``save`` (committed) and restored by the next ``run`` on a fresh machine.

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
#: seeds 1 and 2 of v2a, committed (``v2_sweep cal v2a --seed k --out results/smollm2/v2-sweep``); seed 0 is the
#: family's shipped coefficients.json (the demo's, made by the default config v2a with seed 0)
SWEEP = REPO / "results" / "smollm2" / "v2-sweep"
#: the responses of a test run that a session had to stop (``save``); ``run`` restores them on a fresh machine and
#: resumes, so the one run may span sessions; deleted once the run is bundled
PARTIAL = REPO / "results" / "smollm2" / "locked-test-partial.tar.gz"

#: the frozen procedure (2026-12-03), recorded with every test run
PROCEDURE: dict[str, Any] = {
    "safegene": "v2a", "seeds": [0, 1, 2], "baselines": list(baselines.STUDY), "seeded_baselines": ["resta_dare"],
    "harmful": "harmbench-test-standard", "benign": "rho-overrefusal", "task_items": 200, "max_tokens": 32,
}
TEST_RUN = ("issues 21/22 locked test, frozen 2026-12-03 (experiments/smollm2/locked_test.py PROCEDURE): SafeGene "
            "v2a seeds 0-2 and the validation-tuned baselines of experiments/smollm2/baselines.py STUDY on the demo "
            "family, served stacked (fp32, greedy, 32 tokens)")


def coefficients_file(name: str, seed: int, assets: Path = FAMILY, sweep: Path = SWEEP) -> Path:
    """v2a's coefficients of adapter ``name`` for ``seed``: seed 0 is the shipped file, seeds ≥ 1 the sweep's."""
    if seed == 0:
        return assets / "tasks" / name / "coefficients.json"
    return v2_sweep.sweep_dir(sweep, PROCEDURE["safegene"], seed) / name / "coefficients.json"


def made_by_v2a(path: Path, seed: int) -> bool:
    """Whether ``path`` holds coefficients made by v2a's config with ``seed`` (its config digest says so)."""
    from safegene_runtime.coefficients import load_coefficients

    config = v2_sweep.CANDIDATES[PROCEDURE["safegene"]][1]
    want = (config.replace(seed=seed) if seed else config).digest()
    return path.is_file() and load_coefficients(path).meta.get("config_digest") == want


def pieces(assets: Path = FAMILY, sweep: Path = SWEEP, tuned: Path = baselines.OUT
           ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every served task entry of the test (name, adapter, source folder, coefficients or None, variants, the
    names the rule reads) and what is missing."""
    entries, missing = [], []
    for name in family_tasks(assets):
        for k in PROCEDURE["seeds"]:
            coeffs = coefficients_file(name, k, assets, sweep)
            if not made_by_v2a(coeffs, k):
                missing.append(f"{name}: v2a seed {k} (python -m experiments.smollm2.v2_sweep cal v2a --seed {k} "
                               f"--out {sweep})" if k else f"{name}: the shipped coefficients are not v2a's seed 0")
            served = name if k == 0 else f"{name}-seed{k}"
            entries.append({"name": served, "adapter": name, "path": assets / "tasks" / name,
                            "coefficients": coeffs, "variants": ["plain", "safe"] if k == 0 else ["safe"],
                            "rename": {f"{served}+safegene": f"{name}+safegene-seed{k}"}})
        for b in PROCEDURE["baselines"]:
            folder = baselines.tuned_dir(tuned, b, name)
            if not (folder / "manifest.json").is_file():
                missing.append(f"{name}: baseline {b} (python -m experiments.smollm2.baselines rebuild: the recorded "
                               f"choice, minutes; or tune --method {b}: hours)")
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


def save(out: Path, dest: Path = PARTIAL) -> int:
    """Archive the responses so far (each eval folder's responses and run settings, names.json, procedure.json) in
    ``dest``, atomically; returns the number of responses. Nothing judged: ``run`` judges everything at the end."""
    import io
    import tarfile

    from safegene_runtime.artifacts import atomic_write_bytes
    from safegene_runtime.evaluate import RESPONSES, RUN

    files = [p for p in sorted(out.glob(f"*/{RESPONSES}")) + sorted(out.glob(f"*/{RUN}"))
             + [out / "names.json", out / "procedure.json"] if p.is_file()]
    if not any(p.name == RESPONSES for p in files):
        raise SystemExit(f"no responses under {out} to save")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(out)))
    atomic_write_bytes(dest, buf.getvalue())
    return sum(len(p.read_text().splitlines()) for p in files if p.name == RESPONSES)


def restore(out: Path, src: Path = PARTIAL) -> bool:
    """Unpack a saved partial run into an empty work folder (``run`` then asks only for what is missing)."""
    import tarfile

    from safegene_runtime.evaluate import RESPONSES

    if not src.is_file() or any(out.glob(f"*/{RESPONSES}")):
        return False
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, "r:gz") as tar:
        tar.extractall(out, filter="data")
    log(f"restored the saved partial run {src} into {out}")
    return True


def renames(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {k: v for e in entries for k, v in e["rename"].items()}


def run(out: Path, assets: Path = FAMILY, sweep: Path = SWEEP, tuned: Path = baselines.OUT,
        smoke: int | None = None) -> None:
    """Serve every piece and measure it on the TEST sets (recorded); ``smoke``: the same server and flow on the
    VALIDATION sets, ``smoke`` prompts of each, nothing recorded (a dress rehearsal of the staging, the server with
    every adapter and the renames, before the one real run)."""
    entries, missing = pieces(assets, sweep, tuned)
    if missing:
        raise SystemExit("the frozen procedure is not built yet, so the test does not run:\n  " + "\n  ".join(missing))
    out = out.resolve()
    if not smoke:
        restore(out)
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
    """``safegene decide`` over the saved verdicts, both judges; decision.md, decision.json, the results page's
    tables (tables.md) and plots (safety-utility.png, safety-utility-response.png) in ``out``."""
    from safegene_runtime.cli import main as cli

    folders = [str(out / "safety")] + [str(p) for p in sorted(out.glob("task-*")) if p.is_dir()]
    code = cli(["decide", *folders, "--rename", str(out / "names.json"),
                "--baselines", ",".join(PROCEDURE["baselines"]), "--seeds", ",".join(map(str, PROCEDURE["seeds"])),
                "--base", "smollm2", "--out", str(out / "decision.md"), "--json", str(out / "decision.json"),
                "--tables", str(out / "tables.md"), "--plot", str(out / "safety-utility.png")])
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("plan", "run", "save", "decide"),
                    help="plan: the pieces and what is missing; run: the test (resumes, restoring a saved partial "
                         "run on a fresh machine); save: archive the responses so far in "
                         f"{PARTIAL.relative_to(REPO)} (commit it when a session stops mid-run); decide: the rule again")
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
    elif args.command == "save":
        print(f"{save(out)} responses saved in {PARTIAL}")
    else:
        decide(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
