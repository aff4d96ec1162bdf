"""``safegene gate``: evaluate a new task-adapter version against the base and decide whether it may serve."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..evaluate import JUDGED, RESPONSES, EvalConfig, read_responses, run_eval
from ..gate import REFUSE, GateSets, GateThresholds, decide, failing_samples, write_report
from ..report import fmt_rate
from .eval import resolve_sets

#: the CLI's defaults are the gate's dataclasses' (one source)
SETS = GateSets()

DESCRIPTION = """\
The safety gate over an OpenAI-compatible endpoint that serves the base model, the new task adapter (plain) and
its SafeGene variant (safe). Runs `safegene eval` on the three with the gate's validation sets, then compares:

  safe  harmful response rate <= base + --max-harm-increase points
  safe  over-refusal rate     <= base + --max-over-refusal-increase points
  safe  task score            >= plain - --max-task-drop points        (with --task shots)
  plain is checked against the same two safety limits

Verdict: promote (both pass), promote_safe_only (only <task>+safegene may serve), refuse (exit code 3).
Writes the eval files plus gate.json and gate.md (numbers with Wilson 95% intervals, thresholds, set digests,
failing samples) into --out. A validation set of a few hundred prompts is evidence, not a guarantee."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gate", help="decide whether a new task-adapter version may serve (plain, safe only, "
                              "or not at all)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--base", required=True, help="served name of the aligned base model (the reference)")
    p.add_argument("--plain", required=True, help="served name of the task adapter as trained")
    p.add_argument("--safe", required=True, help="served name of its SafeGene variant (<task>+safegene)")
    p.add_argument("--harmful", default=SETS.harmful, help="harmful validation set (default %(default)s)")
    p.add_argument("--benign", default=SETS.benign, help="edgy-benign validation set (default %(default)s)")
    p.add_argument("--task", default=None, help="the adapter's task shots: JSONL with prompt+answer, or a set name")
    p.add_argument("--max-tokens", type=int, default=SETS.max_tokens, help="tokens per response (default "
                   "%(default)s)")
    for f in dataclasses.fields(GateThresholds):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=f.default,
                       help=f"points (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts of each set (quick looks only)")
    p.add_argument("--out", required=True, help="output folder (eval files, gate.json, gate.md; resumable)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    thresholds = GateThresholds(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GateThresholds)})
    sets = resolve_sets(args.harmful, args.benign, args.task, limit=args.limit)
    out = Path(args.out)
    cfg = EvalConfig(endpoint=args.endpoint, models=[args.base, args.plain, args.safe], out=out, **sets,
                     api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), max_tokens=args.max_tokens,
                     progress=not args.no_progress)
    results = run_eval(cfg)
    decision = decide(results["models"], base=args.base, plain=args.plain, safe=args.safe, thresholds=thresholds)
    judged = read_responses(out / JUDGED)  # the same JSONL row format as responses.jsonl
    samples = failing_samples(judged, read_responses(out / RESPONSES), decision)
    write_report(out, decision, results, samples=samples)
    for c in decision.checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {fmt_rate(c.rate)} (limit {c.comparison} "
              f"{c.limit:.1f}%)")
    print(f"verdict: {decision.verdict}  (report: {out / 'gate.md'})")
    return 3 if decision.verdict == REFUSE else 0
