"""A candidate's λ on TRAINING data: how much of the edgy-benign training pool and of framed harmful training prompts
the ``+safegene`` model refuses, at the candidate's λ and at that λ scaled (issue 20, the ``v2u`` notes).

    python -m experiments.smollm2.pool_check v2q --only sentiment-mix10 --scales 0,0.5,0.75,1
    python -m experiments.smollm2.pool_check v2u                       # every adapter, scale 1

Why: a validation check costs a served run of about 1,400 prompts; choosing a knob needs a cheaper look, and it must
not be a validation one. Every prompt here is one calibration may draw from (:func:`safegene_runtime.edgy_train
.edgy_benign_pool`, ``harmful-align-train``), never a validation or test prompt. For each task adapter, A + T + λ·S
(:class:`~safegene_runtime.lora_forward.LoraForward`, fp32, greedy, 24 tokens: the on-policy term's answers) is asked

* the edgy-benign pool (reported whole and without the candidate's drawn benign shots),
* the candidate's harmful shots (the plain ones and, with ``harmful_framed``, the framed ones),
* 64 other harmful-align-train prompts, each in one of A's trained framings (``rephrase.framed_shots``, seed 7),

and the keyword judge's refusal phrases are counted (:func:`~safegene_runtime.calibration.teachers.says_refusal`: an
empty reply is not a refusal here, as in calibration). Writes ``<out>/<candidate>/pool.json`` (merged per adapter
and scale) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import data
from .family import FAMILY, family_tasks
from .run import log
from .v2_sweep import CANDIDATES, OUT, safety_of, sweep_dir

#: how many other framed harmful training prompts, and the seed that draws and frames them
OTHER_FRAMED, OTHER_SEED = 64, 7
ANSWER_TOKENS = 24


def prompt_sets(task: str, candidate: str, seed: int = 0) -> dict[str, list[str]]:
    """The prompts asked: the pool, the pool without the drawn benign shots, the harmful shots (plain, framed) and
    the other framed harmful prompts; training sets only."""
    from safegene_runtime.datasets import load_named
    from safegene_runtime.edgy_train import draw_edgy_benign, edgy_benign_pool
    from safegene_runtime.calibration.procedure import with_framed_shots
    from safegene_runtime.rephrase import framed_shots

    k, cfg = CANDIDATES[candidate]
    cfg = cfg.replace(seed=seed) if seed else cfg
    harm = data.align_train_shots(task, k, seed)[0]
    _, framed = with_framed_shots(harm, cfg)  # the framed shots calibrate() added
    drawn = set(draw_edgy_benign(cfg.benign_edgy_shots, seed)) if cfg.benign_source != "given" else set()
    pool = list(edgy_benign_pool())
    others = data.sample([it.prompt for it in load_named("harmful-align-train") if it.prompt not in harm],
                         OTHER_FRAMED, OTHER_SEED)
    return {"pool": pool, "pool_not_drawn": [p for p in pool if p not in drawn], "harmful_shots": harm,
            "framed_shots": framed,
            "other_framed": framed_shots(others, OTHER_FRAMED, OTHER_SEED)}


def run(candidate: str, scales: list[float], out: Path = OUT, only: list[str] | None = None,
        seed: int = 0) -> dict[str, dict[str, dict[str, int]]]:
    """``{adapter: {scale: {set: refused}}}`` (plus each set's size under ``"n"``), merged into ``pool.json``."""
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.artifacts import atomic_write_text
    from safegene_runtime.calibration.teachers import generate, says_refusal
    from safegene_runtime.coefficients import load_coefficients
    from safegene_runtime.lora_forward import LoraForward, encode_prompts, load_causal_lm
    from .v2_probe import aligned_A

    _, cfg = CANDIDATES[candidate]
    model, tok = load_causal_lm(aligned_A())
    safety = load_adapter(safety_of(candidate))
    where = sweep_dir(out, candidate, seed) / "pool.json"
    results = json.loads(where.read_text()) if where.is_file() else {}
    for name, task in family_tasks(FAMILY).items():
        if only and name not in only:
            continue
        coeffs = load_coefficients(sweep_dir(out, candidate, seed) / name / "coefficients.json")
        sets = prompt_sets(task, candidate, seed)
        # the pool is asked once: its not-drawn part is counted from the same answers
        asked = {k: v for k, v in sets.items() if k != "pool_not_drawn"}
        encoded = {k: encode_prompts(tok, v, max_tokens=cfg.max_prompt_tokens) for k, v in asked.items()}
        row = results.setdefault(name, {})
        row["n"] = {k: len(v) for k, v in sets.items()}
        task_adapter = load_adapter(FAMILY / "tasks" / name)
        for scale in scales:
            t = time.time()
            refused: dict[str, int] = {}
            with LoraForward.at(model, coeffs, fixed=task_adapter, scaled=safety, scale=scale) as lf:
                with lf.mode(fixed=True, scaled=True):
                    for key, prompts in encoded.items():
                        answers = generate(model, tok, prompts, max_new_tokens=ANSWER_TOKENS,
                                           batch_size=cfg.gen_batch_size, desc="", progress=False)
                        said = [says_refusal(tok, a) for a in answers]
                        refused[key] = sum(said)
                        if key == "pool":
                            kept = set(sets["pool_not_drawn"])
                            refused["pool_not_drawn"] = sum(s for p, s in zip(sets["pool"], said) if p in kept)
                row[f"{scale:g}"] = refused
                log(f"pool_check {candidate} {name} x{scale:g}: {refused} of {row['n']} ({time.time() - t:.0f}s)")
    atomic_write_text(where, json.dumps(results, indent=1) + "\n")
    return results


def table(results: dict) -> str:
    keys = ("pool", "pool_not_drawn", "harmful_shots", "framed_shots", "other_framed")
    lines = ["| adapter | λ × | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, row in sorted(results.items()):
        for scale, refused in row.items():
            if scale != "n":
                lines.append(f"| {name} | {scale} | " + " | ".join(f"{refused.get(k, 0)}/{row['n'][k]}" for k in keys)
                             + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.pool_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate", choices=sorted(CANDIDATES))
    ap.add_argument("--scales", default="1", help="comma list of factors on the candidate's lambda (default: 1)")
    ap.add_argument("--only", help="comma list of task folders (default: all six)")
    ap.add_argument("--seed", type=int, default=0, help="the protocol seed whose coefficients and shots to use")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    try:
        scales = [float(x) for x in a.scales.split(",")]
    except ValueError:
        ap.error(f"--scales must be numbers separated by commas (got {a.scales!r})")
    if any(s < 0 for s in scales):
        ap.error("--scales must be 0 or more")
    print(table(run(a.candidate, scales, a.out, a.only.split(",") if a.only else None, a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
