"""``safegene select``: stage 2, data-aware layer selection of a safety adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Run harmful and benign probe prompts (chat-templated) through the aligned model A and the degraded model D,
score every decoder layer by how much A and D differ on harmful prompts relative to benign ones
(score_l = c_l(H) / (c_l(B) + eps), c_l = mean ||h_A - h_D|| / ||h_A|| of the token-averaged residual after
layer l), and write a NEW safety adapter folder whose manifest records every score and the selected layers.
The input adapter is never modified. Default selection: the top half of the layers.

--method refusal_gradient scores each layer by the safety adapter's own effect instead: in D + lambda*S at
lambda = 0, the derivative of A's refusal-vs-D's-answer log-prob margin (first 4 answer tokens) on harmful probes,
minus any over-refusal it adds on benign probes (same margin, A's answer vs a refusal). It generates A's and D's
greedy answers and runs one backward pass through D."""


def register(subparsers) -> None:
    p = subparsers.add_parser("select", help="stage 2: pick the safety adapter's layers from probe prompts",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aligned", required=True, type=Path, help="aligned model folder A (the serving base)")
    p.add_argument("--degraded", required=True, type=Path, help="degraded model folder D")
    p.add_argument("--harmful", required=True, type=Path, help="harmful probe prompts (JSONL or CSV)")
    p.add_argument("--benign", required=True, type=Path, help="benign / task probe prompts (JSONL or CSV)")
    p.add_argument("--safety", required=True, type=Path, help="safety adapter folder (from `safegene extract`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--top-k", type=int, help="keep the K highest-scoring layers")
    g.add_argument("--threshold", type=float, help="keep layers with score >= T")
    p.add_argument("--method", default="contrast_ratio",
                   choices=("contrast_ratio", "harmful_contrast", "contrast_difference", "refusal_gradient"),
                   help="scorer: contrast_ratio (default), harmful_contrast, contrast_difference, refusal_gradient")
    p.add_argument("--keep", choices=("all", "selected"), default="all",
                   help="all: copy every module and record the selection (default); selected: drop the others")
    p.add_argument("--out", type=Path, help="output folder (default: beside --safety as <name>-selected-<id12>)")
    p.add_argument("--max-prompts", type=int, help="use at most N prompts from each file")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate each templated prompt to its last N tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..adapters import load_adapter
    from ..artifacts import read_manifest, sha256_file
    from ..prompts import load_examples
    from ..selection import select_safety_layers

    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError("--max-prompts must be at least 1")
    load_adapter(args.safety)  # fail fast, before loading models
    harmful = load_examples(args.harmful, limit=args.max_prompts)
    benign = load_examples(args.benign, limit=args.max_prompts)
    sources = {
        "harmful": {"file": str(args.harmful.resolve()), "file_sha256": sha256_file(args.harmful)},
        "benign": {"file": str(args.benign.resolve()), "file_sha256": sha256_file(args.benign)},
    }
    path = select_safety_layers(
        args.aligned, args.degraded, args.safety, harmful, benign,
        top_k=args.top_k, threshold=args.threshold, method=args.method, keep=args.keep, out=args.out,
        batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device, prompt_sources=sources,
    )
    sel = read_manifest(path)["selection"]
    ranked = sorted(sel["scores"].items(), key=lambda kv: -kv[1])
    print("layer scores (high to low): " + ", ".join(f"{l}:{s:.3g}" for l, s in ranked))
    print(f"selected layers: {sel['selected']}")
    print(path)
    return 0
