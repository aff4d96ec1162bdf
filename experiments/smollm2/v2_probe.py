"""Issue 22 item 2: the default calibration against the same plus the on-policy refusal term, on ONE demo adapter
(reverse-mix10 of ``assets/smollm2``), measured on VALIDATION sets only (harmful-val, edgy-benign-val).

The numbers in docs/results.md ("SafeGene v2 calibration knobs") came from these steps (2026-12-02, seed 0, run
from a helper's worktree at the commit that added the knobs). A probe, not the study: 16 shots of each kind from
align-train sets (``harmful-align-train``, ``rho-benign``, reverse training rows; the study's own calibration shots
overlap harmful-val and GSM8K-100), 20 steps, evaluation through float32 hooks (``LoraForward``, not the served
form), 32 greedy tokens, keyword refusal judge only. Each step is saved under ``--out`` and skipped when present.

    python -m experiments.smollm2.v2_probe cal-default      # then cal-onpolicy, eval-default, eval-onpolicy,
    python -m experiments.smollm2.v2_probe report           # eval-plain; report prints the table with intervals
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safegene_runtime.calibration import CalibrationConfig, calibrate
from safegene_runtime.coefficients import load_coefficients
from safegene_runtime.datasets import load_named
from safegene_runtime.paths import safegene_home
from safegene_runtime.report import wilson

from . import data
from .family import FAMILY

TASK = FAMILY / "tasks" / "reverse-mix10"  # "tasks/reverse" before the family was rebuilt on the robust A
SAFETY = FAMILY / "safety"
SHOTS = 16
BASE = dict(steps=20, max_new_tokens=16, seed=0)
CONFIGS = {"default": CalibrationConfig.v1(**BASE),  # "the default" of 2026-12-02, before SafeGene v2
           "onpolicy": CalibrationConfig.v1(**BASE, onpolicy_every=5, onpolicy_tokens=24)}
VAL_SETS = ("harmful-val", "edgy-benign-val")


def aligned_A(assets: Path = FAMILY) -> Path:
    """The A of the family in ``assets`` (SmolLM2 + its alignment LoRA, content-addressed: built once); by default
    the demo's. Why a parameter: a family exported beside ``assets/smollm2`` (a rebuild on a new A) is calibrated on
    its own A, not on the shipped one."""
    from safegene_runtime.models import prepare_smollm2
    from server.cli.demo import aligned_base  # the one recipe for the demo's A

    return aligned_base(prepare_smollm2(), assets / "alignment-lora")


def shots() -> tuple[list[str], list[str], list[str]]:
    """Harmful, task and benign shots, all from align-train sets (never validation or test)."""
    return data.align_train_shots("reverse", SHOTS)


def cal(name: str, out: Path) -> None:
    f = out / f"cal-{name}.json"
    if f.exists():
        return
    harm, task, ben = shots()
    t = time.time()
    calibrate(aligned_A(), TASK, SAFETY, harm, task, ben, CONFIGS[name], out=f, progress=False)
    print(name, "calibrated in", round(time.time() - t, 1), "s", flush=True)


def ev(name: str, out: Path) -> None:
    """Greedy replies of A + reverse (+ λ·safety for a calibrated variant; none for ``plain``) on the sets."""
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.calibration.teachers import generate
    from safegene_runtime.judges.refusal import is_empty, is_refusal
    from safegene_runtime.lora_forward import LoraForward, encode_prompts, load_causal_lm

    f = out / f"eval-{name}.json"
    if f.exists():
        return
    t = time.time()
    model, tok = load_causal_lm(aligned_A())
    s = load_adapter(SAFETY)
    res: dict = {}
    with LoraForward(model, fixed=load_adapter(TASK), scaled=s, layers=s.layers(), init=0.0) as lf:
        if name != "plain":
            c = load_coefficients(out / f"cal-{name}.json")
            lf.set_lambdas({layer: c.of(layer) for layer in lf.layers})
        for set_name in VAL_SETS:
            ids = encode_prompts(tok, [it.prompt for it in load_named(set_name)], max_tokens=256)
            outs = generate(model, tok, ids, max_new_tokens=32, batch_size=32, desc=set_name, progress=False)
            texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
            res[set_name] = {"n": len(texts), "refused": sum(map(is_refusal, texts)),
                             "empty": sum(map(is_empty, texts)), "texts": texts}
    res["seconds"] = round(time.time() - t, 1)
    f.write_text(json.dumps(res, indent=1))
    print(name, "evaluated in", res["seconds"], "s", flush=True)


def report(out: Path) -> None:
    def pct(k: int, n: int) -> str:
        lo, hi = wilson(k, n)
        return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"

    for name in ("plain", "default", "onpolicy"):
        f = out / f"eval-{name}.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        h, b = r["harmful-val"], r["edgy-benign-val"]
        # the keyword judge counts an empty reply as a refusal; the second rate counts it as a non-refusal
        print(f"{name}: harmful-val non-refusal {pct(h['n'] - h['refused'], h['n'])}, "
              f"non-refusal or empty {pct(h['n'] - h['refused'] + h['empty'], h['n'])}, empty {h['empty']}; "
              f"edgy-benign-val refused {pct(b['refused'], b['n'])}, empty {b['empty']}")


def paired_test(out: Path) -> None:
    """Exact McNemar, default against on-policy, per set, on the per-prompt refusal verdicts of the saved replies."""
    from safegene_runtime.decision import mcnemar_exact
    from safegene_runtime.judges.refusal import is_refusal

    files = [out / f"eval-{n}.json" for n in ("default", "onpolicy")]
    if not all(f.exists() for f in files):
        return
    d, o = (json.loads(f.read_text()) for f in files)
    for set_name in VAL_SETS:
        a = [is_refusal(t) for t in d[set_name]["texts"]]
        b = [is_refusal(t) for t in o[set_name]["texts"]]
        only_a, only_b = sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))
        print(f"{set_name}: refused only by default {only_a}, only with on-policy {only_b}, "
              f"exact McNemar p = {mcnemar_exact(only_a, only_b):.2g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", help="cal-default | cal-onpolicy | eval-plain | eval-default | eval-onpolicy | report")
    p.add_argument("--out", type=Path, default=safegene_home() / "experiments" / "smollm2" / "v2-probe")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step.startswith("cal-") and args.step[4:] in CONFIGS:
        cal(args.step[4:], args.out)
    elif args.step.startswith("eval-") and args.step[5:] in ("plain", *CONFIGS):
        ev(args.step[5:], args.out)
    elif args.step == "report":
        report(args.out)
        paired_test(args.out)
    else:
        p.error(f"unknown step {args.step!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
