"""``safegene judge``: train the prompt-harm head; judge a file of responses."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..prompts import write_jsonl


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("judge", help="judges: retrain the prompt-harm head, judge a responses file",
                              description="Judges behind one interface (refusal, prompt_harm, llm:MODEL@URL).")
    sub = p.add_subparsers(dest="judge_command", metavar="<judge command>")

    t = sub.add_parser("train-head", help="(re)train the MiniLM prompt-harm head on shipped data",
                       description="Train the logistic-regression head of the prompt-harm judge on shipped harmful "
                       "vs benign prompts (never on HarmBench test), deterministically, and write it with a manifest "
                       "(data hashes, held-out accuracy, benign-edgy false-positive rate).")
    t.add_argument("--out", default=None, help="output folder (default: the artifact store)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--threshold", type=float, default=0.5)
    t.add_argument("--force", action="store_true", help="replace an existing --out (refreshing the committed head)")
    t.set_defaults(func=run_train)

    f = sub.add_parser("file", help="judge a JSONL of prompt/response rows",
                       description="Judge each row ({prompt, response} JSONL) with the given judges; writes JSONL "
                       "with a 'verdicts' field per row and prints label counts.")
    f.add_argument("--in", dest="inp", required=True, help="JSONL with 'prompt' and 'response' per row")
    f.add_argument("--out", default=None, help="output JSONL (default: print the counts only)")
    f.add_argument("--judges", default="refusal,prompt_harm",
                   help="comma-separated: refusal, prompt_harm, llm:MODEL@URL (default refusal,prompt_harm)")
    f.add_argument("--batch-size", type=int, default=64)
    f.set_defaults(func=run_file)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:

    # lazy: keeps `safegene --help` instant (this step loads torch)
    from ..judges.prompt_harm import train_head
    from ..paths import artifacts_dir

    out = Path(args.out) if args.out else artifacts_dir() / f"prompt_harm_head-seed{args.seed}"
    man = train_head(out, seed=args.seed, weight_decay=args.weight_decay, threshold=args.threshold,
                     force=args.force)
    m = man["metrics"]
    print(f"wrote {out}")
    print(f"held-out accuracy {m['heldout_accuracy']:.3f} (n={m['heldout_n']}), benign-edgy FPR "
          f"{m['benign_edgy_fpr']:.3f} (n={m['benign_edgy_n']}), HarmBench-test recall "
          f"{m['harmbench_test_recall']:.3f} (n={m['harmbench_test_n']})")
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
