"""``safegene baseline``: comparison methods that produce the same kind of adapter as SafeGene."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Baselines for the trade-off study, each writing a PEFT LoRA folder (scale-one config, manifest with lineage):
  uniform    task + lambda * safety with one global lambda on every layer (RESTA-style safety arithmetic)
  safe-lora  Safe LoRA (Hsu et al. 2024): project low-similarity task updates onto the safety subspace"""


def register(subparsers) -> None:
    p = subparsers.add_parser("baseline", help="Safe LoRA and uniform safety arithmetic baselines",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="baseline", metavar="<baseline>")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    u = sub.add_parser("uniform", help="task + lambda * safety on every layer")
    u.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    u.add_argument("--safety", required=True, type=Path, help="safety adapter folder")
    u.add_argument("--lambda", dest="lam", required=True, type=float, help="the global coefficient")
    u.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-uniform<λ>-<id12>)")
    u.set_defaults(func=run_uniform)

    s = sub.add_parser("safe-lora", help="Safe LoRA projection of the task adapter",
                       description="Project each module's task update onto the safety subspace "
                       "C = V V^T / ||V||_F when cos(dT, C dT) < threshold (Hsu et al. 2024).")
    s.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    s.add_argument("--safety", type=Path, help="safety adapter folder: V = its delta")
    s.add_argument("--aligned", type=Path, help="aligned model folder (with --degraded: V = W_A - W_D)")
    s.add_argument("--degraded", type=Path, help="degraded / unaligned model folder")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=0.35, help="project modules with similarity below this")
    g.add_argument("--top-fraction", type=float, help="project this fraction of modules with the lowest similarity")
    s.add_argument("--projection", choices=("paper", "orthogonal"), default="paper")
    s.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-safelora-<id12>)")
    s.set_defaults(func=run_safe_lora)


def run_uniform(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..baselines.uniform import uniform_safety

    path = uniform_safety(args.task, args.safety, args.lam, out=args.out)
    print(path)
    return 0


def run_safe_lora(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..artifacts import read_manifest
    from ..baselines.safe_lora import safe_lora

    if args.safety is None and (args.aligned is None or args.degraded is None):
        raise ValueError("give --safety, or both --aligned and --degraded")
    if args.safety is not None and (args.aligned is not None or args.degraded is not None):
        raise ValueError("give --safety or --aligned/--degraded, not both")
    path = safe_lora(args.task, safety=args.safety, aligned=args.aligned, degraded=args.degraded,
                     threshold=None if args.top_fraction is not None else args.threshold,
                     top_fraction=args.top_fraction, projection=args.projection, out=args.out)
    b = read_manifest(path)["baseline"]
    print(f"projected {b['n_projected']} of {b['n_modules']} modules")
    print(path)
    return 0
