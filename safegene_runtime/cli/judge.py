"""``safegene judge``: train the prompt-harm and response-harm heads; judge a file of responses; measure the harm
judges against hand labels."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ..datasets import DatasetError
from ..judges.prompt_harm import TRAIN_BENIGN, TRAIN_HARMFUL, VAL_BENIGN, VAL_HARMFUL
from ..prompts import write_jsonl
from ..splits import SplitError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("judge", help="judges: retrain the prompt-harm head, judge a responses file",
                              description="Judges behind one interface (refusal, prompt_harm, llm:MODEL@URL).")
    sub = p.add_subparsers(dest="judge_command", metavar="<judge command>")

    t = sub.add_parser("train-head", help="(re)train the MiniLM prompt-harm head on shipped data",
                       description="Train the logistic-regression head of the prompt-harm judge on ALIGN-TRAIN "
                       "harmful vs benign prompts plus our generated edgy-benign prompts, choose its threshold on the "
                       "calibration half of VALIDATION sets and measure it on their report half (never a TEST set: "
                       "each set must be in its family), deterministically, and write it with a manifest (sets, "
                       "digests, threshold, validation accuracy and edgy-benign false-positive rate).")
    t.add_argument("--out", default=None, help="output folder (default: the artifact store)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--threshold", type=float, default=None,
                   help="fixed threshold (default: chosen on the validation sets' calibration half)")
    for flag, default, family in (("--train-harmful", TRAIN_HARMFUL, "align-train"),
                                  ("--train-benign", TRAIN_BENIGN, "align-train"),
                                  ("--val-harmful", VAL_HARMFUL, "validation"),
                                  ("--val-benign", VAL_BENIGN, "validation")):
        t.add_argument(flag, default=",".join(default),
                       help=f"comma-separated {family} set names or files (default {','.join(default)})")
    t.add_argument("--no-edgy-pool", action="store_true",
                   help="leave out our generated edgy-benign training prompts (edgy_train.edgy_benign_pool)")
    t.add_argument("--force", action="store_true", help="replace an existing --out (refreshing the committed head)")
    t.set_defaults(func=run_train)

    r = sub.add_parser("train-response-head", help="(re)train the MiniLM response-harm head",
                       description="Train the logistic head of the response-harm judge (does a response give "
                       "substantive help with a harmful request?) on examples labelled by construction (never by "
                       "the phrase judge) from the response judge's train prompts, deterministically, and write it "
                       "with a manifest (data hashes, dev accuracy, the chosen threshold).")
    r.add_argument("--out", default=None, help="output folder (default: the artifact store)")
    r.add_argument("--train-responses", default=None,
                   help="model responses made for training (experiments/smollm2/judge/train_responses.jsonl)")
    r.add_argument("--threshold-labels", default=None,
                   help="hand-label file whose calibration half picks the threshold "
                   "(tests/data/response_harm_labelled.jsonl); default: the constructed dev split")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--weight-decay", type=float, default=None, help="default: the module's WEIGHT_DECAY")
    r.add_argument("--force", action="store_true", help="replace an existing --out (refreshing the committed head)")
    r.set_defaults(func=run_train_response)

    a = sub.add_parser("agreement", help="accuracy and Cohen's kappa of both harm judges against hand labels",
                       description="Judge every hand-labelled response with the phrase (refusal) judge, as "
                       "safegene eval counts it, and with the response-harm judge; print accuracy and kappa with "
                       "prompt-clustered bootstrap 95%% intervals, overall and on the harmful prompts.")
    a.add_argument("--labels", default="tests/data/response_harm_labelled.jsonl")
    a.add_argument("--out", default=None, help="also write the numbers as JSON")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    a.set_defaults(func=run_agreement)

    f = sub.add_parser("file", help="judge a JSONL of prompt/response rows",
                       description="Judge each row ({prompt, response} JSONL) with the given judges; writes JSONL "
                       "with a 'verdicts' field per row and prints label counts.")
    f.add_argument("--in", dest="inp", required=True, help="JSONL with 'prompt' and 'response' per row")
    f.add_argument("--out", default=None, help="output JSONL (default: print the counts only)")
    f.add_argument("--judges", default="refusal,prompt_harm",
                   help="comma-separated: refusal, prompt_harm, response_harm, llm:MODEL@URL "
                   "(default refusal,prompt_harm)")
    f.add_argument("--batch-size", type=int, default=64)
    f.set_defaults(func=run_file)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:

    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..judges.prompt_harm import train_head
    from ..paths import artifacts_dir

    out = Path(args.out) if args.out else artifacts_dir() / f"prompt_harm_head-seed{args.seed}"

    def names(arg: str) -> list[str]:
        return [x.strip() for x in arg.split(",") if x.strip()]

    try:
        man = train_head(out, seed=args.seed, weight_decay=args.weight_decay, threshold=args.threshold,
                         force=args.force, train_harmful=names(args.train_harmful),
                         train_benign=names(args.train_benign), val_harmful=names(args.val_harmful),
                         val_benign=names(args.val_benign), edgy_pool=not args.no_edgy_pool)
    except (SplitError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = man["metrics"]["validation_report"]
    print(f"wrote {out}")
    print(f"threshold {man['threshold']} ({man['training']['threshold_rule']})")
    print(f"validation report half: accuracy {m['accuracy']:.3f} (n={m['n']}), harmful recall "
          f"{m['harmful_recall']:.3f} (n={m['harmful_n']}), benign false-positive rate {m['benign_fpr']:.3f} "
          f"(n={m['benign_n']})")
    return 0


def run_train_response(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..judges.response_harm import train_response_head
    from ..paths import artifacts_dir

    out = Path(args.out) if args.out else artifacts_dir() / f"response_harm_head-seed{args.seed}"
    kw = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    man = train_response_head(out, train_responses=args.train_responses, seed=args.seed, force=args.force,
                              threshold_labels=args.threshold_labels, **kw)
    dev = man["metrics"]["dev"]
    print(f"wrote {out}")
    print(f"threshold {man['threshold']}; dev accuracy {dev['accuracy']:.3f} (n={dev['n']}), recall "
          f"{dev['recall']:.3f}, false-positive rate {dev['false_positive_rate']:.3f}")
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (the response judge loads torch)
    import json

    from ..judges import ResponseHarmJudge
    from ..judges.agreement import agreement_report, phrase_predictions, read_labels

    rows = read_labels(args.labels)
    rj = ResponseHarmJudge.load_default()
    vs = rj.judge_batch([r["prompt"] for r in rows], [r["response"] for r in rows])
    rep = agreement_report(rows, {"phrase": phrase_predictions(rows),
                                  "response_harm": [int(v.label == "harmful_help") for v in vs]}, seed=args.seed)
    rep["response_harm_threshold"] = rj.threshold
    print(f"{rep['n']} labelled responses, {rep['n_harmful_help']} harmful help; labels {rep['labels']}")
    for name, per in rep["judges"].items():
        for subset, m in per.items():
            print(f"{name:14s} {subset:16s} n={m['n']:4d} accuracy {m['accuracy']:.3f} "
                  f"[{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]  kappa {m['kappa']:.3f} "
                  f"[{m['kappa_ci95'][0]:.3f}, {m['kappa_ci95'][1]:.3f}]  {m['confusion']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def run_file(args: argparse.Namespace) -> int:
    # lazy: keeps `safegene --help` instant (this step loads torch)
    from tqdm import tqdm

    from ..judges import build_judges
    from ..prompts import PromptFileError, read_jsonl

    path = Path(args.inp)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows = []
    for where, r in read_jsonl(path):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise PromptFileError(f"{where}: each row needs string fields 'prompt' and 'response'")
        rows.append(r)
    judges = build_judges([n.strip() for n in args.judges.split(",") if n.strip()])
    counts: dict[str, Counter] = {j.name: Counter() for j in judges}
    for start in tqdm(range(0, len(rows), args.batch_size), desc="judging", unit="batch"):
        batch = rows[start:start + args.batch_size]
        for j in judges:
            for r, v in zip(batch, j.judge_batch([r["prompt"] for r in batch], [r["response"] for r in batch])):
                r.setdefault("verdicts", {})[j.name] = {"label": v.label, "score": v.score, **v.details}
                counts[j.name][v.label] += 1
    if args.out:
        write_jsonl(args.out, rows)
        print(f"wrote {args.out}")
    for name, c in counts.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + f" (n={len(rows)})")
    return 0
