"""How long ``safegene eval`` takes against the demo server: the issue's target is ≤ 5 minutes per model for 400
prompts × 32 tokens.

    .venv/bin/python bench/eval_demo.py                # base, sentiment-mix10, sentiment-mix10+safegene
    .venv/bin/python bench/eval_demo.py --models reverse-mix10+safegene --limit 100

Starts the demo server alone (``safegene demo``'s config: the demo family on the aligned base, judges on, the
packaged engine defaults), then runs ``safegene eval`` once per model, one model at a time, with the harmful set
``harmful-val`` and the benign set ``edgy-benign-val`` (345 prompts together), 32 tokens, temperature 0, the eval's
default concurrency. Each eval gets a fresh output folder (nothing resumed). Prints and saves the wall time per
model and the time scaled to 400 prompts. (The saved results were measured before issue 21 on harmbench-test +
rho-overrefusal, about 390 prompts; ``safegene eval`` now refuses test sets without ``--test-run``, and a speed
measurement has no frozen procedure to record, so the defaults are validation sets.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from bench._common import REPO, loadavg  # noqa: E402

from server.cli.demo import demo_server_config  # noqa: E402
from server.process import ServerProcess, free_port, safegene_serve_argv, server_env  # noqa: E402

TARGET_S = 300.0
TARGET_PROMPTS = 400


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,sentiment-mix10,sentiment-mix10+safegene", help="comma-separated served names")
    ap.add_argument("--harmful", default="harmful-val")
    ap.add_argument("--benign", default="edgy-benign-val")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each set (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "eval-demo.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="safegene-eval-bench-"))
    port = free_port()
    cfg, notes = demo_server_config(state_dir=work / "state", port=port)
    for n in notes:
        print(f"[eval-bench] note: {n}", flush=True)
    cfg_path = work / "server.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    api_key = cfg["auth"]["api_keys"][0]
    server = ServerProcess(safegene_serve_argv(cfg_path), port=port, env=server_env("2"), label="demo server",
                           log_path=work / "server.log")
    rows = []
    try:
        t0 = time.monotonic()
        server.start()
        start_s = time.monotonic() - t0
        print(f"[eval-bench] demo server up in {start_s:.0f} s", flush=True)
        for model in args.models.split(","):
            out = work / f"eval-{model}"
            cmd = [sys.executable, "-m", "safegene_runtime.cli", "eval", "--endpoint", server.base_url,
                   "--models", model, "--harmful", args.harmful, "--benign", args.benign,
                   "--max-tokens", str(args.max_tokens), "--out", str(out), "--api-key", api_key, "--no-progress"]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            load = loadavg()[0]
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, cwd=REPO)
            wall = time.monotonic() - t0
            n = sum(1 for _ in (out / "responses.jsonl").open())
            res = json.loads((out / "results.json").read_text())
            row = {"model": model, "prompts": n, "wall_s": round(wall, 1),
                   "s_per_400": round(wall * TARGET_PROMPTS / n, 1), "load_before": round(load, 2),
                   "met": wall * TARGET_PROMPTS / n <= TARGET_S, "results": res}
            rows.append(row)
            print(f"[eval-bench] {model}: {n} prompts in {wall:.0f} s ({row['s_per_400']:.0f} s per 400; target "
                  f"{TARGET_S:.0f} s: {'met' if row['met'] else 'NOT met'})", flush=True)
    finally:
        server.stop()
    doc = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "server_start_s": round(start_s, 1), "max_tokens": args.max_tokens, "harmful": args.harmful,
           "benign": args.benign, "target_s_per_400": TARGET_S, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"[eval-bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
