"""``safegene calibrate``: stage 3, few-shot per-layer coefficients for one task adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Learn one coefficient lambda_l >= 0 per selected layer of the safety adapter for this task adapter, from a few
shots: on harmful shots the task model complies with, prefer the aligned base's own refusal over the task model's
answer (--refusal-loss margin; 'ce' trains on the base's refusal wording instead); keep the task adapter's own
answers to task shots (KL) and, optionally, the base's own answers to benign shots (KL); a small penalty on lambda.
Only the lambdas are trained (Adam, or with --optimizer adam-shared one step size for all layers so that lambda
moves in proportion to the gradient; clamped to [0, lambda-max]); the models stay frozen. Writes a
coefficients.json (schema safegene.coefficients/v1) for `safegene stack` / `safegene merge`."""


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="stage 3: few-shot per-layer safety coefficients for a task adapter",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=Path, help="aligned base model folder A")
    p.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder T")
    p.add_argument("--safety", required=True, type=Path, help="safety adapter folder S (with its selection)")
    p.add_argument("--harmful-shots", required=True, type=Path, help="harmful prompts (JSONL or CSV)")
    p.add_argument("--task-shots", required=True, type=Path, help="task prompts (JSONL or CSV)")
    p.add_argument("--benign-shots", type=Path, help="general benign prompts (JSONL or CSV)")
    p.add_argument("--out", required=True, type=Path, help="coefficients.json to write")
    p.add_argument("--max-shots", type=int, help="use at most N shots from each file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=1.0, help="weight of the task KL term")
    p.add_argument("--gamma", type=float, default=1.0, help="weight of the benign KL term")
    p.add_argument("--lambda-max", type=float, default=4.0)
    p.add_argument("--penalty", type=float, default=1e-3, help="weight of sum(lambda^2)")
    p.add_argument("--init", default="1", metavar="LAMBDA[,LAMBDA...]",
                   help="the lambda every layer starts from (default 1); several, e.g. '1,0': calibrate from each "
                        "and keep the lowest loss over all shots (each start costs the optimisation again, not the "
                        "teachers)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="length of the teachers' greedy answers")
    p.add_argument("--max-target-tokens", type=int, default=16,
                   help="train on the first N answer tokens (0: all)")
    p.add_argument("--max-prompt-tokens", type=int, default=128, help="keep the last N tokens of each prompt")
    p.add_argument("--batch-size", type=int, default=8, help="shots per term per step")
    p.add_argument("--gen-batch-size", type=int, default=32, help="prompts per batch when generating targets")
    p.add_argument("--refusal-loss", choices=("margin", "ce"), default="margin",
                   help="refusal term: margin of the base's refusal over the task model's answer (default), or "
                        "cross-entropy of the base's refusal")
    p.add_argument("--margin-tokens", type=int, default=4,
                   help="answer tokens the margin compares: the opening, where refusing is decided (default 4)")
    p.add_argument("--margin-target", type=float, default=0.0, metavar="TAU",
                   help="push the margin past TAU nats per token, softplus(TAU - margin) (default 0)")
    p.add_argument("--benign-tokens", type=int, default=0, metavar="N",
                   help="benign KL over the first N tokens of the base's answers, where an over-refusing model "
                        "stops or refuses (default 0: all --max-target-tokens)")
    p.add_argument("--benign-contrast", type=float, default=None, metavar="DELTA",
                   help="weight of the benign contrast term: prefer the base's answer to a refusal or an empty reply "
                        "on benign shots the base answers (default: the library's, see safegene_runtime.calibration)")
    p.add_argument("--optimizer", choices=("adam", "adam-shared"), default="adam",
                   help="adam: a step size per layer (default); adam-shared: one for all layers, so layers the loss "
                        "barely depends on barely move (from --init 0 plain Adam moves every layer at the same rate)")
    p.add_argument("--layers", help="comma-separated layers to calibrate, or 'all' (overrides the safety manifest's "
                                    "selection; on SmolLM2 all layers did better than the selection, docs/results.md)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: calibration imports torch; `safegene --help` must stay instant (cli/__init__.py)
    from ..artifacts import sha256_file
    from ..calibration import calibrate
    from ..prompts import load_examples

    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the coefficients.json file path")
    layers = None
    if args.layers == "all":
        layers = "all"
    elif args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--layers {args.layers!r}: expected comma-separated integers") from None
    try:
        init = [float(x) for x in args.init.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--init {args.init!r}: expected a number or comma-separated numbers") from None
    files = {"harmful": args.harmful_shots, "task": args.task_shots, "benign": args.benign_shots}
    shots = {k: load_examples(p, limit=args.max_shots) if p else None for k, p in files.items()}
    sources = {k: {"file": str(p.resolve()), "file_sha256": sha256_file(p)} for k, p in files.items() if p}
    c = calibrate(
        args.base, args.task, args.safety, shots["harmful"], shots["task"], shots["benign"],
        seed=args.seed, steps=args.steps, lr=args.lr, beta=args.beta, gamma=args.gamma, lambda_max=args.lambda_max,
        penalty=args.penalty, init=init[0] if len(init) == 1 else init, max_new_tokens=args.max_new_tokens,
        max_target_tokens=args.max_target_tokens or None, max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size, gen_batch_size=args.gen_batch_size, layers=layers, refusal_loss=args.refusal_loss,
        margin_tokens=args.margin_tokens, margin_target=args.margin_target,
        benign_tokens=args.benign_tokens or None, optimizer=args.optimizer, device=args.device,
        **({} if args.benign_contrast is None else {"benign_contrast": args.benign_contrast}),
        out=args.out, shot_sources=sources,
    )
    loss = c.meta["loss"]
    print("lambda: " + ", ".join(f"{l}:{v:.3f}" for l, v in sorted(c.layers.items())))
    print(f"loss: before {loss['before']['total']:.4f}, after {loss['after']['total']:.4f}, "
          f"at lambda=0 {loss['at_zero']['total']:.4f}")
    if "starts" in c.meta:
        print("starts: " + ", ".join(f"from {s['init']:g}: {s['after']:.4f}" for s in c.meta["starts"])
              + f"; kept the start {c.meta['chosen_init']:g}")
    print(args.out)
    return 0
