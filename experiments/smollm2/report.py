"""Collect the study's measured numbers into Markdown (table, coefficients, layer scores, timings) and a plot.

    python -m experiments.smollm2.report [--profile full|demo|fast] [--out FILE.md] [--plot FILE.png]

Every number comes from files the pipeline wrote: ``eval/safety/results.json`` and ``eval/task-*/results.json``
(written by ``safegene eval``), the calibration stages' ``coefficients.json``, the selection stage's manifest
and each stage's ``stage.json`` (timings). Nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safegene_runtime.report import fmt_rate

from .run import SETTINGS, TASKS, Study


def _load(p: Path) -> dict:
    return json.loads(p.read_text())["models"] if p.is_file() else {}


def collect(study: Study) -> dict:
    from .evaluate import eval_root

    root = eval_root(study)
    safety = _load(root / "safety" / "results.json")
    task = {t: _load(root / f"task-{t}" / "results.json") for t in study.task_names}
    rows = {}
    for name, m in safety.items():
        rows.setdefault(name, {}).update({k: m.get(k) for k in ("harmful_response_rate", "over_refusal_rate")})
    for t, models in task.items():
        for name, m in models.items():
            key = name if name != "A" else f"A ({t})"
            rows.setdefault(key, {})["task_accuracy"] = m.get("task_accuracy")
            if name == "A":
                rows[key].update({k: rows.get("A", {}).get(k) for k in ("harmful_response_rate", "over_refusal_rate")})
    return rows


def stage_table(study: Study) -> list[str]:
    lines = ["| stage folder | seconds | result |", "|---|---|---|"]
    for d in sorted(study.root.glob("*/stage.json")):
        s = json.loads(d.read_text())
        res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in (s.get("result") or {}).items()
               if k not in ("selection", "layers")}
        lines.append(f"| {d.parent.name} | {s['seconds']} | {json.dumps(res)} |")
    return lines


def markdown(study: Study) -> str:
    rows = collect(study)
    out = ["| model | harmful response rate | over-refusal (benign) | task accuracy |", "|---|---|---|---|"]
    for name, r in rows.items():
        out.append(f"| {name} | {fmt_rate(r.get('harmful_response_rate'))} | {fmt_rate(r.get('over_refusal_rate'))} "
                   f"| {fmt_rate(r.get('task_accuracy'))} |")
    out += ["", "Calibrated coefficients (λ per layer; layers not listed are 0):", ""]
    for d in sorted(study.root.glob("calibrate-*/coefficients.json")):
        c = json.loads(d.read_text())
        lam = {k: round(v, 3) for k, v in sorted(c.get("layers", {}).items(), key=lambda kv: int(kv[0]))}
        out.append(f"- `{d.parent.name}`: {json.dumps(lam)}")
    sel = sorted(study.root.glob("select-*/adapter/manifest.json"))
    if sel:
        s = json.loads(sel[-1].read_text()).get("selection", {})
        scores = {k: round(v, 3) for k, v in sorted(s.get("scores", {}).items(), key=lambda kv: int(kv[0]))}
        out += ["", f"Layer scores (selection, {sel[-1].parent.parent.name}): {json.dumps(scores)}",
                f"Selected layers: {s.get('selected')}"]
    out += ["", "Stage timings:", ""] + stage_table(study)
    return "\n".join(out) + "\n"


def plot(study: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = collect(study)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, r in rows.items():
        hr, acc = r.get("harmful_response_rate"), r.get("task_accuracy")
        if not hr or not acc or hr.get("rate") is None or acc.get("rate") is None:
            continue
        method = name.split("+", 1)[1] if "+" in name else ("aligned A" if name.startswith("A") else "adapter alone")
        marker = {"safegene": "*", "adapter alone": "o", "aligned A": "s"}.get(method, "^")
        ax.scatter(100 * acc["rate"], 100 * hr["rate"], marker=marker, s=80 if marker == "*" else 40)
        ax.annotate(name, (100 * acc["rate"], 100 * hr["rate"]), fontsize=6)
    ax.set_xlabel("task accuracy (%) ↑")
    ax.set_ylabel("harmful response rate (%) ↓")
    ax.set_title("SmolLM2-135M family: safety vs utility (one point per adapter × method)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.report", description=__doc__)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--profile", choices=("full", "demo", "fast"), default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args(argv)
    study = Study(a.profile or ("fast" if a.fast else "full"), TASKS, SETTINGS)
    md = markdown(study)
    if a.out:
        Path(a.out).write_text(md)
    else:
        print(md)
    if a.plot:
        plot(study, Path(a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
