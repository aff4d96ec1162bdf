"""``safegene merge``: fold a task delta and/or the λ-scaled safety delta into a full checkpoint."""

from __future__ import annotations

import argparse

from ..artifacts import read_manifest


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="base + ΔT + λ·ΔS → full model checkpoint",
        description=(
            "Write W' = W + s_T·B_T A_T + λ_l·B_S A_S for every module the adapters touch, streaming the base "
            "shard by shard and keeping its dtype (or writing --dtype); config, tokenizer and generation files are copied. "
            "--task or --safety (with --coefficients) may be given alone."
        ),
    )
    p.add_argument("--base", required=True, help="base model folder (safetensors, single or sharded)")
    p.add_argument("--task", help="task LoRA folder")
    p.add_argument("--safety", help="safety adapter folder")
    p.add_argument("--coefficients", help="coefficients.json (required with --safety)")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--out", help="output folder (must not hold a different artifact)")
    dest.add_argument("--store", help="artifact store; output is <store>/<name>-<id> (default: $SAFEGENE_HOME/artifacts)")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help="write every floating tensor in this dtype (float32, bfloat16, float16; default: the base's "
                        "own). float32 keeps a delta smaller than a bf16 rounding step, which a bf16 merge drops: see "
                        "delta retention in the output")
    p.add_argument("--name", default="merged", help="name prefix inside --store (default merged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..merge import merge_checkpoint

    if args.safety and not args.coefficients:
        raise ValueError("--safety needs --coefficients (for λ=1 everywhere write {\"default\": 1.0} to a file)")
    path = merge_checkpoint(
        args.base, task=args.task, safety=args.safety, coefficients=args.coefficients, out=args.out,
        store=args.store, name=args.name, progress=not args.no_progress, dtype=args.dtype,
    )
    man = read_manifest(path)
    print(f"merged model: {path}")
    print(f"  id {man['id'][:12]}  merged modules {man['merged_modules']}  "
          f"delta retention {man.get('delta_retention', 1.0):.3f}")
    return 0
