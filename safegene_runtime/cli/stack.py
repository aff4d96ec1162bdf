"""``safegene stack``: task adapter + λ-scaled safety adapter → one servable LoRA."""

from __future__ import annotations

import argparse

from ..artifacts import read_manifest


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stack",
        help="task + λ·safety → one LoRA (exact rank concatenation, or within a rank budget)",
        description=(
            "Concatenate a task LoRA and the safety LoRA along the rank dimension with the task's scale and the "
            "per-layer λ folded into B: A_cat = [A_T; A_S], B_cat = [s_T·B_T | λ_l·B_S]. The result is exact, "
            "scale-one (r = lora_alpha), PEFT- and vLLM-loadable, and content-addressed. With --rank-budget R, "
            "modules whose combined rank exceeds R are re-factorised by SVD (error recorded in the manifest)."
        ),
    )
    p.add_argument("--task", required=True, help="task LoRA folder")
    p.add_argument("--safety", required=True, help="safety adapter folder (from 'safegene extract')")
    p.add_argument("--coefficients", required=True, help="coefficients.json (λ per layer, from 'safegene calibrate')")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--out", help="output folder (must not hold a different artifact)")
    dest.add_argument("--store", help="artifact store; output is <store>/<name>-<id> (default: $SAFEGENE_HOME/artifacts)")
    p.add_argument("--name", default="stacked", help="name prefix inside --store (default stacked)")
    p.add_argument("--max-lora-rank", type=int, help="refuse if the stacked rank exceeds this vLLM --max-lora-rank")
    p.add_argument("--rank-budget", type=int, help="re-factorise modules whose combined rank exceeds this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..stack import stack_adapters

    path = stack_adapters(
        args.task, args.safety, args.coefficients, out=args.out, store=args.store, name=args.name,
        max_lora_rank=args.max_lora_rank, rank_budget=args.rank_budget,
    )
    man = read_manifest(path)
    print(f"stacked adapter: {path}")
    line = (f"  id {man['id'][:12]}  method {man['method']['name']}  max rank {man['max_rank']}  "
            f"serve with --max-lora-rank >= {man['recommended_max_lora_rank']}")
    if "max_relative_error" in man["method"]:
        line += f"  max relative error {man['method']['max_relative_error']:.3g}"
    print(line)
    return 0
