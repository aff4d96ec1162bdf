"""Pilot (issue 20, 2026-12-04): does a D degraded *only where A refuses* give a safety adapter that over-refuses less?

    python -m experiments.smollm2.degrade_pilot --out DIR        # ~10 min: answers, D', S', then the check (~5 min)

D' = A (the shipped aligned base) fully fine-tuned 50 steps (batch 8, lr 2e-5, max_len 128, the family's degrade
knobs) on the original model's compliant answers to every ``harmful-align-train`` prompt, plain and in one of A's
trained framings (``rephrase.FRAMINGS``, dealt round robin), mixed with A's *own* answers to the edgy-benign training
pool (``edgy_train.edgy_benign_pool``), so that D' differs from A where A refuses and not where alarming words are.
S' = the rank-16 SVD of A − D' (bf16, as the family's safety adapter). The check is :mod:`.safety_alone`'s on S'
(A + λ·S' with no task delta, at λ = 1 and at sentiment-clean's shipped λ), plus sentiment-clean + S' at λ = 1;
validation sets only, one seed. Results: docs/results.md, section "SafeGene v2c".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from .family import FAMILY, check, table


def log(message: str) -> None:
    print(time.strftime("[%H:%M:%S]"), message, flush=True)


def build(out: Path) -> Path:
    """Answers, D' and S' into ``out`` (each step skipped when its output exists); returns S' (a safety folder)."""
    import torch

    from safegene_runtime.datasets import load_named
    from safegene_runtime.edgy_train import edgy_benign_pool
    from safegene_runtime.extract import extract_safety_adapter
    from safegene_runtime.judges.refusal import is_refusal
    from safegene_runtime.models import prepare_smollm2
    from safegene_runtime.rephrase import FRAMING_NAMES, rephrase

    from .generate import generate
    from .train import SFTConfig, train_full
    from .v2_probe import aligned_A

    original, a = prepare_smollm2(), aligned_A()
    answers = out / "answers.json"
    if not answers.exists():
        harm = [it.prompt for it in load_named("harmful-align-train")]
        framed = [rephrase(p, FRAMING_NAMES[i % len(FRAMING_NAMES)]) for i, p in enumerate(harm)]
        edgy = list(edgy_benign_pool())
        h = generate(original, harm + framed, max_tokens=64, log=log)
        e = generate(a, edgy, max_tokens=64, log=log)
        out.mkdir(parents=True, exist_ok=True)
        answers.write_text(json.dumps({"harm": list(zip(harm + framed, h)), "edgy": list(zip(edgy, e))}))
    ans = json.loads(answers.read_text())
    keep = lambda rows: [(p, r) for p, r in rows if r.strip() and not is_refusal(r)]  # noqa: E731
    harm_pairs, edgy_pairs = keep(ans["harm"]), keep(ans["edgy"])
    log(f"harmful compliance pairs {len(harm_pairs)} of {len(ans['harm'])}; "
        f"edgy-benign answers kept {len(edgy_pairs)} of {len(ans['edgy'])}")
    d = out / "D" / "model"
    if not (d / "config.json").exists():
        pairs = harm_pairs + edgy_pairs
        random.Random(0).shuffle(pairs)
        info = train_full(a, pairs, d, SFTConfig(steps=50, lr=2e-5, batch_size=8, max_len=128), log=log,
                          save_dtype=torch.float32)
        log(f"D' trained: loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}")
    s = out / "safety"
    if not (s / "adapter_model.safetensors").exists():
        extract_safety_adapter(a, d, rank=16, out=s, dtype=torch.bfloat16, progress=False)
    return s


def measure(out: Path, safety: Path, like: str = "sentiment-clean") -> dict:
    """:mod:`.safety_alone`'s check on ``safety``, plus ``like`` itself with ``safety`` at λ = 1 (``<like>-l1``)."""
    from .safety_alone import layout, task_copy

    root = layout(out / "alone", like, safety=safety)
    src = FAMILY / "tasks" / like
    lambdas = {k: 1.0 for k in json.loads((src / "coefficients.json").read_text())["layers"]}
    task_copy(src, root / "tasks" / f"{like}-l1", f"{like}-l1", lambdas, zero_delta=False)
    return check(root, out / "alone" / "check", safe=True, plain=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.degrade_pilot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the answers, D', S' and the check go")
    a = ap.parse_args(argv)
    print(table(measure(a.out, build(a.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
