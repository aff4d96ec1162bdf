"""Issues 20-22: the locked tests of frozen procedures on the demo family (each run once; every run is recorded).

    python -m experiments.smollm2.locked_test plan      # what the test evaluates, and what is not built yet
    python -m experiments.smollm2.locked_test run       # serve everything, evaluate on the TEST sets, decide
    python -m experiments.smollm2.locked_test decide    # the decision again, from the saved responses
    python -m experiments.smollm2.locked_test run --smoke 4   # a dress rehearsal on VALIDATION sets (4 prompts each)
    python -m experiments.smollm2.locked_test save      # a session must stop mid-run: archive the responses, commit
    python -m experiments.smollm2.evidence bundle --only test-locked   # then commit results/ with docs/test-runs.jsonl
    python -m experiments.smollm2.locked_test run --procedure v2q-shrink   # the second locked test (issue 20)

What is frozen (:data:`PROCEDURES`, each written before any of it met a test set). The first, ``v2a`` (2026-12-03):
SafeGene v2's default procedure ``v2a`` with seeds 0, 1, 2 (``experiments.smollm2.v2_sweep cal v2a --seed k``:
other shots, other calibration seed; seed 0 is the family's shipped ``coefficients.json``, seeds 1 and 2 are
committed in ``results/smollm2/v2-sweep``), and every baseline of :data:`.baselines.STUDY` as tuned on validation
(``experiments.smollm2.baselines tune``, its choices committed in ``results/smollm2/baseline-choices.json``:
``baselines rebuild`` builds them again in minutes, each checked against its recorded content id; RESTA's DARE masks
drawn again with seeds 1 and 2 at the chosen knobs), each adapter of the family, A, and each adapter alone. All of
them are served at once by one server as the demo serves them (stacked LoRAs on A, fp32, greedy, 32 tokens) and
measured by ``safegene eval --test-run`` (recorded in ``docs/test-runs.jsonl``) on HarmBench test standard (159),
rho over-refusal (150) and each task's 200 test items, both judges; then ``safegene decide`` (paired tests over
prompts, seeds averaged per prompt). ``run`` refuses to start until every piece is built, so the test is never run
on a part of the procedure; it resumes from the saved responses, and a run a session had to stop is archived by
``save`` (committed) and restored by the next ``run`` on a fresh machine.

The second, ``v2q-shrink`` (2026-12-05): the candidate that replaced ``v2a`` by its validation rule, seeds 0-2
(all three in ``results/smollm2/v2-sweep/v2q-shrink``), served with the safety adapter it calibrates on, S_3
(``safety_projection build``, content id recorded in ``procedure.json``), beside A and each adapter alone, on the
same test sets and settings. The baselines are not served again: they are the same frozen procedures on the same A
and adapters, so their judged rows are taken from the first test's bundle (``results/smollm2/test-locked``) by
:func:`keep_rows`; serving them again would only read the test set again. A and the adapters alone are served
again, and :func:`same_as_first` counts how many of their responses equal the first test's (the check that the
reuse is sound).

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
from .family import FAMILY, RATES, family_server, family_tasks
from .run import log
from .tasks import generate, task_file_rows, write_val

REPO = Path(__file__).resolve().parents[2]
OUT = safegene_home() / "experiments" / "smollm2" / "locked-test"
#: seeds 1 and 2 of v2a, committed (``v2_sweep cal v2a --seed k --out results/smollm2/v2-sweep``); seed 0 is the
#: family's shipped coefficients.json (the demo's, made by the default config v2a with seed 0)
SWEEP = REPO / "results" / "smollm2" / "v2-sweep"
#: the responses of a test run that a session had to stop (``save``); ``run`` restores them on a fresh machine and
#: resumes, so the one run may span sessions; deleted once the run is bundled
PARTIAL = REPO / "results" / "smollm2" / "locked-test-partial.tar.gz"

#: the frozen procedures, recorded with every test run; never edited once one met a test set (a new one is a new key)
PROCEDURES: dict[str, dict[str, Any]] = {
    # 2026-12-03 (issues 21/22)
    "v2a": {"safegene": "v2a", "seeds": [0, 1, 2], "baselines": list(baselines.STUDY),
            "seeded_baselines": ["resta_dare"], "harmful": "harmbench-test-standard", "benign": "rho-overrefusal",
            "task_items": 200, "max_tokens": 32},
    # 2026-12-05 (issue 20; docs/results.md, "The second locked test"): v2q-shrink on S_3, the first test's
    # baselines' judged rows reused (not served again), A and the adapters alone served again
    "v2q-shrink": {"safegene": "v2q-shrink", "safety": "S_3", "seeds": [0, 1, 2], "baselines": list(baselines.STUDY),
                   "seeded_baselines": ["resta_dare"], "baselines_from": "test-locked",
                   "harmful": "harmbench-test-standard", "benign": "rho-overrefusal", "task_items": 200,
                   "max_tokens": 32},
}
#: the first locked test's procedure (evidence.py's decision arguments read it)
PROCEDURE = PROCEDURES["v2a"]
TEST_RUNS = {
    "v2a": ("issues 21/22 locked test, frozen 2026-12-03 (experiments/smollm2/locked_test.py PROCEDURE): SafeGene "
            "v2a seeds 0-2 and the validation-tuned baselines of experiments/smollm2/baselines.py STUDY on the demo "
            "family, served stacked (fp32, greedy, 32 tokens)"),
    "v2q-shrink": ("issue 20 second locked test, frozen 2026-12-05 (experiments/smollm2/locked_test.py "
                   "PROCEDURES['v2q-shrink']): SafeGene v2q-shrink seeds 0-2 on S_3, A and the adapters alone, "
                   "served stacked (fp32, greedy, 32 tokens); baselines' rows reused from the first locked test"),
}
TEST_RUN = TEST_RUNS["v2a"]
#: the first test's bundle, where the second takes the baselines' judged rows from
FIRST_BUNDLE = REPO / "results" / "smollm2" / "test-locked"


def out_dir(proc: str = "v2a") -> Path:
    """A procedure's work folder: the first test's ``locked-test``, later ones ``locked-test-<procedure>``."""
    return OUT if proc == "v2a" else OUT.with_name(f"{OUT.name}-{proc}")


def coefficients_file(name: str, seed: int, assets: Path = FAMILY, sweep: Path = SWEEP, proc: str = "v2a") -> Path:
    """The procedure's coefficients of adapter ``name`` for ``seed``: v2a's seed 0 is the shipped file, every other
    seed (and every seed of a later candidate) the sweep's."""
    if seed == 0 and proc == "v2a":
        return assets / "tasks" / name / "coefficients.json"
    return v2_sweep.sweep_dir(sweep, PROCEDURES[proc]["safegene"], seed) / name / "coefficients.json"


def made_by(path: Path, seed: int, proc: str = "v2a") -> bool:
    """Whether ``path`` holds coefficients made by the procedure's candidate config with ``seed`` (its config digest
    says so)."""
    from safegene_runtime.coefficients import load_coefficients

    config = v2_sweep.CANDIDATES[PROCEDURES[proc]["safegene"]][1]
    want = (config.replace(seed=seed) if seed else config).digest()
    return path.is_file() and load_coefficients(path).meta.get("config_digest") == want


def how_to_make(name: str, seed: int, sweep: Path, proc: str) -> str:
    """The missing-piece line for seed ``seed`` of ``name``: the commands that make it."""
    cand = PROCEDURES[proc]["safegene"]
    if seed == 0 and proc == "v2a":
        return f"{name}: the shipped coefficients are not v2a's seed 0"
    steps = [f"cal {cand} --seed {seed} --out {sweep}"]
    if cand in v2_sweep.SHRINK_OF:
        steps = [f"cal {v2_sweep.SHRINK_OF[cand]} --seed {seed} --out {sweep}",
                 f"shrink {cand} --seed {seed} --out {sweep}"]
    return f"{name}: {cand} seed {seed} (" + "; then ".join(f"python -m experiments.smollm2.v2_sweep {c}"
                                                            for c in steps) + ")"


def pieces(assets: Path = FAMILY, sweep: Path = SWEEP, tuned: Path = baselines.OUT, proc: str = "v2a",
           first: Path = FIRST_BUNDLE) -> tuple[list[dict[str, Any]], list[str]]:
    """Every served task entry of the test (name, adapter, source folder, coefficients or None, variants, the
    names the rule reads) and what is missing."""
    p = PROCEDURES[proc]
    entries, missing = [], []
    reuse = bool(p.get("baselines_from"))
    if reuse and not (first / "manifest.json").is_file():
        missing.append(f"the first locked test's bundle {first} (the baselines' judged rows are taken from it)")
    for name in family_tasks(assets):
        for k in p["seeds"]:
            coeffs = coefficients_file(name, k, assets, sweep, proc)
            if not made_by(coeffs, k, proc):
                missing.append(how_to_make(name, k, sweep, proc))
            served = name if k == 0 else f"{name}-seed{k}"
            entries.append({"name": served, "adapter": name, "path": assets / "tasks" / name,
                            "coefficients": coeffs, "variants": ["plain", "safe"] if k == 0 else ["safe"],
                            "rename": {f"{served}+safegene": f"{name}+safegene-seed{k}"}})
        for b in [] if reuse else p["baselines"]:
            folder = baselines.tuned_dir(tuned, b, name)
            if not (folder / "manifest.json").is_file():
                missing.append(f"{name}: baseline {b} (python -m experiments.smollm2.baselines rebuild: the recorded "
                               f"choice, minutes; or tune --method {b}: hours)")
            seeds = p["seeds"] if b in p["seeded_baselines"] else [None]
            for k in seeds:
                served = f"{name}-{b.replace('_', '-')}" + (f"-seed{k}" if k else "")
                entries.append({"name": served, "adapter": name, "path": folder, "coefficients": None,
                                "variants": ["plain"], "redraw_seed": k if k else None,
                                "rename": {served: f"{name}+{b}" + (f"-seed{k}" if k is not None else "")}})
    return entries, missing


def keep_rows(bundle: Path, dest: Path, methods: list[str]) -> dict[str, int]:
    """The judged rows of ``methods`` (every seed; :func:`~safegene_runtime.decision.parse_model`'s method names)
    from a bundled measurement's ``<group>.judged.jsonl.gz`` files (or from eval folders ``<group>/judged.jsonl``,
    as ``evidence recount`` writes them), written as eval folders ``dest/<group>/judged.jsonl`` (atomically) that
    ``safegene decide`` reads beside a new run's; rows per group. Nothing else is taken (the second test keeps the
    first's baselines, not its A or adapters)."""
    import gzip

    from safegene_runtime.artifacts import atomic_write_bytes
    from safegene_runtime.decision import parse_model
    from safegene_runtime.evaluate import JUDGED

    files = [(f.name.removesuffix(".judged.jsonl.gz"), f) for f in sorted(bundle.glob("*.judged.jsonl.gz"))]
    files += [(f.parent.name, f) for f in sorted(bundle.glob(f"*/{JUDGED}"))]
    counts = {}
    for group, f in files:
        text = gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text()
        rows = [line for line in text.splitlines() if parse_model(json.loads(line)["model"])[1] in methods]
        if rows:
            atomic_write_bytes(dest / group / JUDGED, ("\n".join(rows) + "\n").encode())
            counts[group] = len(rows)
    if not counts:
        raise SystemExit(f"no judged rows of {', '.join(methods)} in {bundle}")
    return counts


def against_first(out: Path, first: Path = FIRST_BUNDLE) -> dict[str, dict[str, Any]]:
    """This test's SafeGene against the first test's (v2a), pooled over the adapters: per metric the paired
    comparison (:func:`.v2_sweep.compare_pooled`, B = this test) over (adapter, prompt) pairs, outcomes averaged over
    seeds ({} where neither measured it); the second rule's part 3 reads the phrase judge's harmful rate."""
    from safegene_runtime.decision import load_outcomes

    keep_rows(first, out / "v2a-from-test-locked", ["safegene"])
    names = json.loads((out / "names.json").read_text())
    mine = load_outcomes([out / "safety", *sorted(out.glob("task-*"))], names)
    theirs = load_outcomes(sorted(p for p in (out / "v2a-from-test-locked").iterdir() if p.is_dir()))
    pooled = v2_sweep.compare_pooled(theirs, mine)
    table = {key: pooled.get(key, {}) for key in RATES}
    (out / "against-first.json").write_text(json.dumps(table, indent=1) + "\n")
    return table


def same_as_first(out: Path, bundle: Path = FIRST_BUNDLE) -> dict[str, dict[str, int]]:
    """Per model served in both tests without SafeGene (A, the adapters alone): how many responses are the same
    text in this run as in the first test's bundle, of how many prompts both answered."""
    import gzip

    from safegene_runtime.evaluate import RESPONSES

    first: dict[tuple[str, str, str], str] = {}
    for f in bundle.glob("*.responses.jsonl.gz"):
        for line in gzip.decompress(f.read_bytes()).decode().splitlines():
            r = json.loads(line)
            if "+" not in r["model"]:
                first[(r["model"], r["set"], r["id"])] = r.get("response")
    out_counts: dict[str, dict[str, int]] = {}
    for f in sorted(out.glob(f"*/{RESPONSES}")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            key = (r["model"], r["set"], r["id"])
            if key in first:
                c = out_counts.setdefault(r["model"], {"same": 0, "n": 0})
                c["n"] += 1
                c["same"] += first[key] == r.get("response")
    return out_counts


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


def write_task_tests(folder: Path, assets: Path = FAMILY, n: int = PROCEDURE["task_items"]) -> dict[str, Path]:
    """``<task>-test.jsonl``: each task's first ``task_items`` held-out items (tasks.generate's test rows)."""
    out = {}
    for task in sorted(set(family_tasks(assets).values())):
        path = folder / f"{task}-test.jsonl"
        if not path.is_file():
            write_jsonl(path, task_file_rows(generate(task)[1][:n], f"{task}-test"))
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


def served_family(out: Path, proc: str, assets: Path = FAMILY) -> Path:
    """The family folder the server is started from: ``assets`` when the procedure serves the family's safety
    adapter, else a copy of A's LoRA and of the candidate's safety adapter (S_μ, :func:`.v2_sweep.safety_of`) in
    ``out/family`` with copies of the task folders (the server config is built from them; the task entries served
    are the staged ones)."""
    from .family import new_family

    safety = v2_sweep.safety_of(PROCEDURES[proc]["safegene"], assets)
    if safety == assets / "safety":
        return assets
    root = new_family(out / "family", assets, safety)
    for name in family_tasks(assets):
        shutil.copytree(assets / "tasks" / name, root / "tasks" / name,
                        ignore=shutil.ignore_patterns("coefficients.json"))
    return root


def run(out: Path, assets: Path = FAMILY, sweep: Path = SWEEP, tuned: Path = baselines.OUT,
        smoke: int | None = None, proc: str = "v2a", first: Path = FIRST_BUNDLE) -> None:
    """Serve every piece and measure it on the TEST sets (recorded); ``smoke``: the same server and flow on the
    VALIDATION sets, ``smoke`` prompts of each, nothing recorded (a dress rehearsal of the staging, the server with
    every adapter and the renames, before the one real run)."""
    from safegene_runtime.artifacts import read_manifest

    p = PROCEDURES[proc]
    entries, missing = pieces(assets, sweep, tuned, proc, first)
    if missing:
        raise SystemExit("the frozen procedure is not built yet, so the test does not run:\n  " + "\n  ".join(missing))
    out = out.resolve()
    if not smoke and proc == "v2a":
        restore(out)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    tasks = stage(entries, out / "adapters", assets)
    family = served_family(out, proc, assets)
    if smoke:
        tests = {t: write_val(t, out) for t in sorted(set(family_tasks(assets).values()))}
        harmful, benign, limit, test_run = "harmful-val", "edgy-benign-val", smoke, None
    else:
        tests = write_task_tests(out, assets, p["task_items"])
        harmful, benign, limit, test_run = p["harmful"], p["benign"], None, TEST_RUNS[proc]
    (out / "names.json").write_text(json.dumps(renames(entries), indent=1) + "\n")
    (out / "procedure.json").write_text(json.dumps(
        p | {"safety_id": read_manifest(family / "safety").get("id")}, indent=1) + "\n")
    kinds = family_tasks(assets)

    def edit(cfg: dict, demo_cfg: dict) -> None:
        cfg["tasks"], cfg["adapter_root"] = tasks, str(out / "adapters")
        cfg["engine"]["max_cpu_loras"] = len(tasks) + sum("safe" in t["variants"] for t in tasks)

    with family_server(family, out / "server.log", label="locked-test server", edit=edit,
                       timeout=1800) as (server, cfg):
        # served name -> the task its adapter was trained on (A: None)
        served = {cfg["base"]["served_name"]: None} | {
            f"{e['name']}+safegene" if v == "safe" else e["name"]: kinds[e["adapter"]]
            for e in entries for v in e["variants"]}
        eval_cli(server.base_url, ",".join(served), out / "safety", harmful=harmful, benign=benign, task=None,
                 limit=limit, max_tokens=p["max_tokens"], log=log,
                 test_run=test_run and test_run + ": harmful and over-refusal sets")
        for task, path in tests.items():
            mine = [m for m, t in served.items() if t == task]
            eval_cli(server.base_url, ",".join(mine), out / f"task-{task}", harmful=None, benign=None,
                     task=path, limit=limit, max_tokens=p["max_tokens"], log=log,
                     test_run=test_run and test_run + f": task {task} test items")
    decide(out, proc, first, reuse=not smoke)  # a rehearsal on validation reads no test row of the first test


def decide(out: Path, proc: str = "v2a", first: Path = FIRST_BUNDLE, reuse: bool = True) -> None:
    """``safegene decide`` over the saved verdicts, both judges; decision.md, decision.json, the results page's
    tables (tables.md) and plots (safety-utility.png, safety-utility-response.png) in ``out``. A procedure that
    reuses the first test's baselines reads their judged rows (:func:`keep_rows`, in ``out/baselines-from-
    <bundle>``) beside its own, and writes the reuse check (``same-as-first.json``, :func:`same_as_first`) and the
    pairing with the first test's SafeGene (``against-first.json``, :func:`against_first`); ``reuse=False`` (a
    rehearsal on validation) reads nothing of the first test."""
    from safegene_runtime.cli import main as cli

    p = PROCEDURES[proc]
    folders = [str(out / "safety")] + [str(f) for f in sorted(out.glob("task-*")) if f.is_dir()]
    if p.get("baselines_from") and reuse:
        kept = out / f"baselines-from-{p['baselines_from']}"
        keep_rows(first, kept, p["baselines"])
        folders += [str(f) for f in sorted(kept.iterdir()) if f.is_dir()]
        (out / "same-as-first.json").write_text(json.dumps(same_as_first(out, first), indent=1) + "\n")
        against_first(out, first)
    code = cli(["decide", *folders, "--rename", str(out / "names.json"),
                "--baselines", ",".join(p["baselines"]), "--seeds", ",".join(map(str, p["seeds"])),
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
    ap.add_argument("--procedure", choices=sorted(PROCEDURES), default="v2a",
                    help="which frozen procedure (default v2a, the first locked test; v2q-shrink: the second)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"work folder (default {OUT}[-<procedure>]; with --smoke, that name + -smoke)")
    ap.add_argument("--smoke", type=int, metavar="N",
                    help="run: a dress rehearsal on the VALIDATION sets, N prompts of each, nothing recorded")
    args = ap.parse_args(argv)
    if args.smoke is not None and (args.command != "run" or args.smoke < 1):
        ap.error("--smoke N (N >= 1) goes with run")
    if args.command == "save" and args.procedure != "v2a":
        ap.error("save archives the first test's partial run only")
    default = out_dir(args.procedure)
    out = args.out or (default.with_name(default.name + "-smoke") if args.smoke else default)
    if args.command == "plan":
        entries, missing = pieces(proc=args.procedure)
        for e in entries:
            print(f"{e['name']:<32} {', '.join(e['variants']):<12} -> {', '.join(e['rename'].values())}")
        print(f"\n{len(entries)} task entries; {len(missing)} pieces missing" + (":" if missing else ""))
        for m in missing:
            print(f"  {m}")
        return 1 if missing else 0
    if args.command == "run":
        run(out, smoke=args.smoke, proc=args.procedure)
    elif args.command == "save":
        print(f"{save(out)} responses saved in {PARTIAL}")
    else:
        decide(out, args.procedure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
