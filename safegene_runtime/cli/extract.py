"""``safegene extract``: stage 1, the safety adapter from an aligned and a degraded model."""

from __future__ import annotations

import argparse

from ..artifacts import read_manifest


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="aligned − degraded → low-rank safety adapter (PEFT LoRA folder)",
        description=(
            "Per decoder-layer linear module, take ΔS = W(aligned) − W(degraded) and store its truncated SVD as a "
            "scale-one PEFT LoRA (B = U_k Σ_k^½, A = Σ_k^½ V_kᵀ). Checkpoints are streamed one tensor at a time. "
            "With --degraded-lora the degraded model is the aligned model plus that LoRA, and ΔS is the LoRA negated "
            "(exact, no SVD)."
        ),
    )
    p.add_argument("--aligned", required=True, help="aligned (serving base) model folder, safetensors")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--degraded", help="degraded model folder (same architecture)")
    src.add_argument("--degraded-lora", help="LoRA folder that turns the aligned model into the degraded one")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--rank", type=int, help="fixed rank per module (default 16 when neither --rank nor --energy)")
    k.add_argument("--energy", type=float, help="keep the smallest rank with this share of spectral energy, e.g. 0.9")
    p.add_argument("--modules", help="comma-separated module kinds (default all: q_proj,k_proj,v_proj,o_proj,"
                   "gate_proj,up_proj,down_proj)")
    p.add_argument("--layers", help="comma-separated decoder layer indices (default all)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="storage dtype (default fp32)")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--out", help="output folder (must not hold a different artifact)")
    dest.add_argument("--store", help="artifact store; output is <store>/<name>-<id> (default: $SAFEGENE_HOME/artifacts)")
    p.add_argument("--name", default="safety", help="name prefix inside --store (default safety)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..checkpoints import resolve_dtype
    from ..extract import extract_safety_adapter

    dtype = resolve_dtype(args.dtype)
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError as e:
            raise ValueError(f"--layers must be comma-separated integers, got {args.layers!r}") from e
    path = extract_safety_adapter(
        args.aligned, args.degraded, degraded_lora=args.degraded_lora, rank=args.rank, energy=args.energy,
        modules=args.modules, layers=layers, dtype=dtype, out=args.out, store=args.store, name=args.name,
        progress=not args.no_progress,
    )
    man = read_manifest(path)
    print(f"safety adapter: {path}")
    print(f"  id {man['id'][:12]}  modules {len(man['modules'])}  max rank {man['max_rank']}  "
          f"energy kept {man['energy_kept']:.4f}")
    outside = man.get("not_in_adapter") or {}
    if outside:
        worst = max(outside, key=outside.get)
        print(f"  note: {len(outside)} tensor(s) that a LoRA cannot carry differ between the models and are left out "
              f"(largest relative change {outside[worst]:.3g} in {worst}; all in the manifest's not_in_adapter)")
    return 0
