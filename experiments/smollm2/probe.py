"""Quick refusal probe: how often A + T + λ·S refuses the selection's probe prompts, without a server.

    python -m experiments.smollm2.probe sentiment-clean:safety:0.5 sentiment-mix10:select:@coefficients.json ...

Each spec is ``ADAPTER:VECTOR:LAMBDA``:

* ``ADAPTER``: a task adapter of the study (``sentiment-clean``, ``topic-mix10``, ...) or ``A`` for A alone;
* ``VECTOR``: ``safety`` (the rank-16 SVD of A − D), ``select`` (the same adapter, as the selection stage stores it),
  ``align`` (the alignment LoRA, i.e. A − original) or ``none``;
* ``LAMBDA``: one number for every layer, a JSON object ``{"layer": λ}`` (other layers 0), or ``@FILE`` to read a
  ``coefficients.json``.

It greedy-decodes 32 tokens with Hugging Face (fp32, the calibration's own forward, ``LoraForward``) for N harmful
and N benign prompts of the **probe** split (``data.splits()``: used by layer selection, never by the evaluation)
and prints one JSON line per spec: refusal rates by the keyword judge, and how many of those were empty replies.
About a minute per spec on two cores at N = 48. It is the tool used to look for a λ region before changing the
calibration objective (docs/study-log.md); the study's numbers come from the evaluation stage, not from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from safegene_runtime.adapters import load_adapter
from safegene_runtime.artifacts import ArtifactError
from safegene_runtime.calibration.teachers import generate
from safegene_runtime.coefficients import load_coefficients
from safegene_runtime.judges.refusal import refusal_match
from safegene_runtime.lora_forward import LoraForward, encode_prompts, load_causal_lm

from . import data
from .run import Study


def _lambdas(spec: str) -> float | dict[int, float]:
    if spec.startswith("@"):
        return dict(load_coefficients(spec[1:]).layers)
    if spec.startswith("{"):
        return {int(k): float(v) for k, v in json.loads(spec).items()}
    return float(spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", metavar="ADAPTER:VECTOR:LAMBDA")
    ap.add_argument("-n", type=int, default=48, help="harmful and benign probe prompts each (default 48)")
    ap.add_argument("--profile", default="full", help="study profile whose cached stages to use (default full)")
    ap.add_argument("--examples", action="store_true", help="also print the first two replies of each set")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SMOLLM2_THREADS", str(os.cpu_count() or 1))))
    study = Study(a.profile, [], [])
    study.st.cached_only = True  # a probe never trains: every stage it reads must exist
    sp = data.splits()
    sets = {"harmful": sp["harmful_probe"][: a.n], "benign": sp["benign_probe"][: a.n]}
    vectors = {"safety": lambda: study.safety() / "adapter", "select": lambda: study.select() / "adapter",
               "align": lambda: study.align() / "lora", "none": lambda: None}
    parsed = []
    for spec in a.specs:  # every spec checked before the model loads
        parts = spec.split(":", 2)
        if len(parts) != 3 or parts[1] not in vectors:
            ap.error(f"{spec!r}: expected ADAPTER:VECTOR:LAMBDA with VECTOR one of {', '.join(vectors)}")
        try:
            _lambdas(parts[2])
        except (ValueError, OSError, KeyError, ArtifactError) as e:
            ap.error(f"{spec!r}: bad LAMBDA: {e}")
        parsed.append((spec, *parts))
    model, tok = load_causal_lm(study.A())
    for spec, adapter, vector, lam in parsed:
        scaled = vectors[vector]()
        task = None
        if adapter != "A":
            name, setting = adapter.rsplit("-", 1)
            task = load_adapter(study.task_adapter(name, setting) / "adapter")
        t0 = time.time()
        row: dict = {"spec": spec}
        with LoraForward(model, fixed=task, scaled=load_adapter(scaled) if scaled else None, init=0.0) as lf:
            if scaled:
                lf.set_lambdas(_lambdas(lam))
            for role, prompts in sets.items():
                outs = generate(model, tok, encode_prompts(tok, prompts, max_tokens=128), max_new_tokens=32,
                                batch_size=len(prompts), desc=role, progress=False)
                texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
                rules = [refusal_match(t) for t in texts]
                row[f"{role}_refused"] = round(sum(r is not None for r in rules) / len(texts), 4)
                row[f"{role}_empty"] = round(sum(r == "empty" for r in rules) / len(texts), 4)
                if a.examples:
                    row[f"{role}_examples"] = texts[:2]
        row["n"], row["seconds"] = a.n, round(time.time() - t0, 1)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
