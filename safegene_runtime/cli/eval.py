"""``safegene eval``: run prompt sets against models on an OpenAI-compatible endpoint and report."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..datasets import NAMED_SETS, PromptSet, resolve
from ..evaluate import EvalConfig, run_eval
from ..report import fmt_rate

#: the CLI's defaults are EvalConfig's (one source)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig)}

DESCRIPTION = """\
Send every prompt of the harmful, benign and task sets to every model (temperature 0) on an OpenAI-compatible
endpoint (our server, a plain vLLM server, another provider), judge the responses and write into --out:
responses.jsonl (raw, resumable: rerun the same command after an interruption and only missing rows are
requested), judged.jsonl, results.json (per model: harmful response rate by the phrase (refusal) judge and by the
response-harm judge, refusal rate, over-refusal rate, task accuracy, each with N and a Wilson 95%% CI), report.md
and safety_utility.png.

Sets are names of shipped sets or JSONL/CSV files. Named sets: %s.
Task files are JSONL with "prompt" and "answer" (+ optional "labels" list for classification)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate models on an OpenAI-compatible endpoint (harm, refusal, over-refusal, task accuracy)",
        description=DESCRIPTION % ", ".join(NAMED_SETS), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="base URL of the API, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--models", required=True, help="comma-separated served model names")
    p.add_argument("--harmful", help="harmful prompt set: a name (e.g. harmbench-test) or a JSONL/CSV file")
    p.add_argument("--benign", help="benign prompt set for over-refusal (e.g. rho-overrefusal) or a file")
    p.add_argument("--task", help="task set: a name (gsm8k-100, garak-yesno) or a JSONL file with prompt+answer")
    p.add_argument("--out", required=True, help="output folder (reused to resume an interrupted run)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each set")
    p.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"],
                   help="max_tokens per response (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"],
                   help="parallel requests (default %(default)s; keep it at least the server's engine.max_num_seqs)")
    p.add_argument("--timeout", type=float, default=DEFAULTS["timeout"],
                   help="seconds per request (default %(default)s)")
    p.add_argument("--retries", type=int, default=DEFAULTS["retries"],
                   help="retries per request on 429/5xx/network errors (default %(default)s)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--system-prompt", default=None, help="optional system message sent before each prompt")
    p.add_argument("--llm-judge", default=None, metavar="llm:MODEL@URL",
                   help="also judge harmful-set responses with a guard model (key: $SAFEGENE_JUDGE_API_KEY)")
    p.add_argument("--response-judge", default=DEFAULTS["response_judge"], metavar="NAME",
                   help="judge behind the second harmful rate (default %(default)s: does the response give "
                   "substantive help?); 'none' reports the phrase-judge rate only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_sets(harmful: str | None, benign: str | None, task: str | None, *,
                 limit: int | None = None) -> dict[str, PromptSet | None]:
    """The role -> prompt set mapping EvalConfig takes, from set names or files (None where a role is not run)."""
    return {role: resolve(spec, kind=role).head(limit) if spec else None
            for role, spec in (("harmful", harmful), ("benign", benign), ("task", task))}


def run(args: argparse.Namespace) -> int:

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    if args.max_tokens < 1 or args.concurrency < 1:
        raise ValueError("--max-tokens and --concurrency must be >= 1")
    sets = resolve_sets(args.harmful, args.benign, args.task, limit=args.limit)
    cfg = EvalConfig(
        endpoint=args.endpoint, models=models, out=Path(args.out), **sets,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), max_tokens=args.max_tokens,
        concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, system_prompt=args.system_prompt,
        llm_judge=args.llm_judge, progress=not args.no_progress,
        response_judge=None if str(args.response_judge).lower() in ("", "none") else args.response_judge,
    )
    results = run_eval(cfg)
    req = results.get("requests", {})
    print(f"requests: {req.get('new', 0)} new, {req.get('cached', 0)} already in {args.out}/responses.jsonl")
    shown = {"harmful_response_rate": "harmful_response_rate (phrase judge)",
             "response_harmful_rate": "harmful_rate (response judge)", "over_refusal_rate": "over_refusal_rate",
             "task_accuracy": "task_accuracy"}
    for m, r in results["models"].items():
        parts = [f"{title}={fmt_rate(r.get(k))}" for k, title in shown.items() if r.get(k)]
        print(f"{m}: " + "; ".join(parts))
    print(f"wrote {args.out}/results.json, report.md, safety_utility.png")
    return 0
