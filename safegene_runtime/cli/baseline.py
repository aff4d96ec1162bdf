"""``safegene baseline``: comparison methods that produce the same kind of adapter as SafeGene, and their tuner."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Baselines for the trade-off study, each writing a PEFT LoRA folder (scale-one config, manifest with lineage):
  uniform     task + lambda * safety with one global lambda on every layer (safety arithmetic)
  resta-dare  RESTA-style: task + lambda * DARE_p(safety) (drop rate p, kept entries x 1/(1-p), seeded)
  safe-lora   Safe LoRA (Hsu et al. 2024): project low-similarity task updates onto the safety subspace
  safemerge   SafeMERGE (Djuhera et al. 2025): merge the safety LoRA into low-similarity modules only
  tune        choose a baseline's knobs per adapter on VALIDATION sets with a written rule (test sets refused)"""


def _add_v_source(p: argparse.ArgumentParser, safety_help: str) -> None:
    p.add_argument("--safety", type=Path, help=safety_help)
    p.add_argument("--aligned", type=Path, help="aligned model folder (V = W_aligned - W_other, with one of the next)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--degraded", type=Path, help="degraded copy of the aligned model (V = W_A - W_D)")
    g.add_argument("--original", type=Path, help="the model the aligned one was aligned from (V = W_A - W_orig, "
                   "the Safe LoRA paper's choice)")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("baseline", help="baselines (uniform, RESTA+DARE, Safe LoRA, SafeMERGE) and their tuner",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="baseline", metavar="<baseline>")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    u = sub.add_parser("uniform", help="task + lambda * safety on every layer")
    u.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    u.add_argument("--safety", required=True, type=Path, help="safety adapter folder")
    u.add_argument("--lambda", dest="lam", required=True, type=float, help="the global coefficient")
    u.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-uniform<λ>-<id12>)")
    u.set_defaults(func=run_uniform)

    r = sub.add_parser("resta-dare", help="task + lambda * DARE_p(safety) (RESTA-style task arithmetic)",
                       description="RESTA-style safety task arithmetic with DARE: drop each LoRA factor entry of the "
                       "safety adapter (or, --dare-on task, of the task adapter) with probability p, scale the kept "
                       "ones by 1/(1-p), then add lambda * safety on every layer. p = 0 is the uniform baseline.")
    r.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    r.add_argument("--safety", required=True, type=Path, help="safety adapter folder")
    r.add_argument("--lambda", dest="lam", type=float, default=1.0, help="coefficient of the safety delta (default 1)")
    r.add_argument("--p", type=float, required=True, help="DARE drop rate in [0, 1)")
    r.add_argument("--seed", type=int, default=0, help="seed of the DARE masks (default 0)")
    r.add_argument("--dare-on", choices=("safety", "task"), default="safety", help="which adapter DARE drops from")
    r.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-resta<λ>-p<p>-<id12>)")
    r.set_defaults(func=run_resta)

    s = sub.add_parser("safe-lora", help="Safe LoRA projection of the task adapter",
                       description="Project each module's task update onto the safety subspace "
                       "C = V V^T / ||V||_F when cos(dT, C dT) < threshold (Hsu et al. 2024).")
    s.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    _add_v_source(s, "safety adapter folder: V = its delta")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=0.35, help="project modules with similarity below this")
    g.add_argument("--top-fraction", type=float, help="project this fraction of modules with the lowest similarity")
    s.add_argument("--projection", choices=("paper", "orthogonal"), default="paper")
    s.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-safelora-<id12>)")
    s.set_defaults(func=run_safe_lora)

    m = sub.add_parser("safemerge", help="SafeMERGE: merge the safety LoRA into low-similarity modules",
                       description="Per module, the Safe LoRA similarity of the task update; modules below the "
                       "threshold become (1-w) * task + w * safety, the others keep the task update (Djuhera et al. "
                       "2025). V: the safety adapter, or --aligned with --original / --degraded.")
    m.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    _add_v_source(m, "safety adapter folder (the LoRA merged in; also V unless --aligned is given)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=0.35, help="merge modules with similarity below this")
    g.add_argument("--top-fraction", type=float, help="merge this fraction of modules with the lowest similarity")
    m.add_argument("--weight", type=float, default=0.2, help="w, the safety LoRA's share in a merged module (0.2)")
    m.add_argument("--combination", choices=("exact", "peft_linear"), default="exact",
                   help="exact: (1-w) dT + w dS; peft_linear: the reference code's factor-wise PEFT 'linear' merge")
    m.add_argument("--projection", choices=("paper", "orthogonal"), default="paper")
    m.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-safemerge-<id12>)")
    m.set_defaults(func=run_safemerge)

    t = sub.add_parser("tune", help="choose a baseline's knobs per adapter on validation sets",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Build every candidate of a grid, evaluate each with an evaluator, pick one with "
                       "the rule below and write it with every candidate's numbers in manifest['tuning'].\n\n"
                       "Rule: lowest validation harmful rate with task score >= plain - 1 point and over-refusal <= "
                       "aligned + 3 points (the slacks are options); ties -> smallest intervention (relative distance "
                       "of the adapter's delta from the task's), then grid order.\n\nThe evaluator is a Python "
                       "callable 'module:function' taking an adapter folder (None: the aligned model without an "
                       "adapter) and returning {harmful_rate, over_refusal_rate, task_score} as fractions, or a "
                       "running SafeGene server (--endpoint) scoring each candidate with the eval harness. Test sets "
                       "(harmbench-test*, rho-overrefusal*, gsm8k-100, files named *test* / *heldout*) are refused.")
    t.add_argument("method", choices=("uniform", "resta_dare", "safe_lora", "safemerge"))
    t.add_argument("--task", required=True, type=Path, help="task LoRA adapter folder")
    _add_v_source(t, "safety adapter folder")
    t.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2",
                   help="a knob's values (repeat per knob; default: the method's grid). Knobs: uniform lam; "
                   "resta_dare lam, p, seed; safe_lora threshold or top_fraction; safemerge threshold or "
                   "top_fraction, weight")
    ev = t.add_argument_group("evaluator (one of)")
    ev.add_argument("--evaluator", metavar="MODULE:FUNCTION", help="a Python evaluator callable (with --sets)")
    ev.add_argument("--sets", help="comma-separated validation set names/files that --evaluator reads")
    ev.add_argument("--endpoint", help="a running SafeGene server's API URL (http://HOST:PORT/v1): each candidate is "
                    "registered through the admin API (it is built under --store, which must lie under the "
                    "server's adapter_root), scored with `safegene eval`'s harness and retired")
    ev.add_argument("--base-model", help="with --endpoint: the served name of the aligned base model")
    ev.add_argument("--harmful", help="with --endpoint: harmful validation set (e.g. harmful-val)")
    ev.add_argument("--benign", help="with --endpoint: benign/edgy validation set")
    ev.add_argument("--task-set", help="with --endpoint: task validation file (prompt + answer)")
    ev.add_argument("--limit", type=int, help="with --endpoint: the first N prompts of each set")
    ev.add_argument("--max-tokens", type=int, help="with --endpoint: max_tokens per response (eval's default)")
    ev.add_argument("--api-key", help="with --endpoint: user key (default: $OPENAI_API_KEY)")
    ev.add_argument("--admin-key", help="with --endpoint: admin key (default: $SAFEGENE_ADMIN_KEY)")
    ev.add_argument("--eval-out", type=Path, help="with --endpoint: where each candidate's eval folder goes "
                    "(default: <store>/tune-eval)")
    t.add_argument("--store", type=Path, help="where candidates and the result are built (default: beside --task)")
    t.add_argument("--task-slack", type=float, default=None, help="task-score slack below plain (default 0.01)")
    t.add_argument("--over-refusal-slack", type=float, default=None,
                   help="over-refusal slack above aligned (default 0.03)")
    t.add_argument("--out", type=Path, help="output folder (default: beside --task as <task>-<method>-tuned-<id12>)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_tune)


def _v_kwargs(args) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("aligned", "degraded", "original") if getattr(args, k) is not None}


def run_uniform(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..baselines.uniform import uniform_safety

    print(uniform_safety(args.task, args.safety, args.lam, out=args.out))
    return 0


def run_resta(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..artifacts import read_manifest
    from ..baselines.resta import resta_dare

    path = resta_dare(args.task, args.safety, args.lam, p=args.p, seed=args.seed, dare_on=args.dare_on, out=args.out)
    z = read_manifest(path)["baseline"]["zero_entries"]
    print(f"DARE p={args.p:g} on the {args.dare_on} adapter: {z['zero']} of {z['n']} factor entries are zero")
    print(path)
    return 0


def run_safe_lora(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..artifacts import read_manifest
    from ..baselines.safe_lora import safe_lora

    path = safe_lora(args.task, safety=args.safety, **_v_kwargs(args),
                     threshold=None if args.top_fraction is not None else args.threshold,
                     top_fraction=args.top_fraction, projection=args.projection, out=args.out)
    b = read_manifest(path)["baseline"]
    print(f"projected {b['n_projected']} of {b['n_modules']} modules")
    print(path)
    return 0


def run_safemerge(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..artifacts import read_manifest
    from ..baselines.safemerge import safemerge

    if args.safety is None:
        raise ValueError("give --safety: the safety LoRA that SafeMERGE merges in")
    path = safemerge(args.task, args.safety, **_v_kwargs(args),
                     threshold=None if args.top_fraction is not None else args.threshold,
                     top_fraction=args.top_fraction, weight=args.weight, combination=args.combination,
                     projection=args.projection, out=args.out)
    b = read_manifest(path)["baseline"]
    print(f"merged {b['n_merged']} of {b['n_modules']} modules")
    print(path)
    return 0


def parse_grid(items: list[str]) -> dict[str, list[Any]] | None:
    """``["lam=0.5,1", "p=0,0.5"]`` -> ``{"lam": [0.5, 1.0], "p": [0.0, 0.5]}`` (seed values as ints)."""
    if not items:
        return None
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--grid {item!r}: expected KNOB=V1,V2,...")
        vals: list[Any] = _floats(values)
        grid[key.strip()] = [int(v) for v in vals] if key.strip() == "seed" else vals
    return grid


def load_evaluator(spec: str):
    """The callable named ``module:function``."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"--evaluator {spec!r}: expected MODULE:FUNCTION")
    obj = getattr(importlib.import_module(mod), fn, None)
    if not callable(obj):
        raise ValueError(f"--evaluator {spec!r}: {mod} has no callable {fn!r}")
    return obj


def _evaluator(args, store: Path):
    """The evaluator the arguments name: a Python callable, or a ServedEvaluator on --endpoint."""
    if (args.evaluator is None) == (args.endpoint is None):
        raise ValueError("give exactly one evaluator: --evaluator MODULE:FUNCTION (with --sets) or --endpoint URL")
    if args.evaluator is not None:
        if not args.sets:
            raise ValueError("--evaluator needs --sets: the validation sets it reads, so they can be checked")
        return load_evaluator(args.evaluator), [s.strip() for s in args.sets.split(",") if s.strip()]
    missing = [f for f in ("base_model", "harmful", "benign", "task_set") if getattr(args, f) is None]
    if missing:
        raise ValueError("--endpoint needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    from ..baselines.served import ServedEvaluator  # lazy: the eval harness and torch only for this subcommand

    extra = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    ev = ServedEvaluator(args.endpoint, base_model=args.base_model, harmful=args.harmful, benign=args.benign,
                         task=args.task_set, out=args.eval_out or store / "tune-eval", limit=args.limit,
                         api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                         admin_key=args.admin_key or os.environ.get("SAFEGENE_ADMIN_KEY"), **extra)
    return ev, []


def run_tune(args) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..artifacts import read_manifest
    from ..baselines.tune import Rule, check_validation_sets, tune

    if args.sets:
        check_validation_sets([s.strip() for s in args.sets.split(",") if s.strip()])  # before any import or build
    store = args.store or args.task.resolve().parent
    evaluator, sets = _evaluator(args, store)
    rule_kw = {k: v for k, v in (("task_slack", args.task_slack), ("over_refusal_slack", args.over_refusal_slack))
               if v is not None}
    path = tune(args.method, args.task, evaluator, sets=sets, safety=args.safety, **_v_kwargs(args),
                grid=parse_grid(args.grid), rule=Rule(**rule_kw), out=args.out, store=store,
                progress=not args.no_progress)
    tun = read_manifest(path)["tuning"]
    best = tun["candidates"][tun["chosen"]]
    print(f"chose {json.dumps(tun['knobs'])} of {len(tun['candidates'])} candidates"
          f"{'' if tun['feasible'] else ' (none met both bounds: smallest shortfall)'}: "
          + ", ".join(f"{k}={v:.3f}" for k, v in best["metrics"].items()))
    print(path)
    return 0
