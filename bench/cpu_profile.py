"""Where the CPU time goes without any server: vLLM's offline ``LLM`` over the knobs the serving defaults depend on.

    .venv/bin/python bench/cpu_profile.py --model smollm2 [--out bench/results/profile-smollm2.json]

One process per cell, one cell at a time (bench/offline.py), the same fixed chat prompts, batch and length as
bench/serving.py. The cells: engine dtype (bf16, fp32), eager vs compiled (base model only: vLLM turns compilation
off with LoRA), LoRA off / a rank-16 task adapter / the stacked rank-32 safe adapter, vLLM's CPU LoRA ops vs the
grouped ones (server/cpu_lora.py), the engine's --max-lora-rank, and the same with oneDNN capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``: what a CPU without AVX512-BF16 does). Prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, bench_env, median  # noqa: E402
from server.cpu_lora import ENV as CPU_LORA_ENV  # noqa: E402

#: (label, dtype, compile, adapter ("task" | "stacked" | None), engine rank, LoRA ops, ISA cap)
CELLS = [
    ("base bf16 eager", "bfloat16", False, None, None, None, None),
    ("base bf16 compiled", "bfloat16", True, None, None, None, None),
    ("base fp32 eager", "float32", False, None, None, None, None),
    ("base fp32 compiled", "float32", True, None, None, None, None),
    ("task r16 @16, vLLM ops, bf16", "bfloat16", False, "task", 16, "stock", None),
    ("task r16 @16, grouped, bf16", "bfloat16", False, "task", 16, "grouped", None),
    ("task r16 @32, vLLM ops, bf16", "bfloat16", False, "task", 32, "stock", None),
    ("task r16 @32, grouped, bf16", "bfloat16", False, "task", 32, "grouped", None),
    ("stacked r32 @32, vLLM ops, bf16", "bfloat16", False, "stacked", 32, "stock", None),
    ("stacked r32 @32, grouped, bf16", "bfloat16", False, "stacked", 32, "grouped", None),
    ("stacked r32 @32, grouped, fp32", "float32", False, "stacked", 32, "grouped", None),
    ("AVX2 cap: base bf16 eager", "bfloat16", False, None, None, None, "AVX2"),
    ("AVX2 cap: base fp32 eager", "float32", False, None, None, None, "AVX2"),
    ("AVX2 cap: stacked r32, grouped, bf16", "bfloat16", False, "stacked", 32, "grouped", "AVX2"),
    ("AVX2 cap: stacked r32, grouped, fp32", "float32", False, "stacked", 32, "grouped", "AVX2"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/cpu_profile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="'smollm2' or a local HF model folder (default smollm2)")
    p.add_argument("--batch", type=int, default=32, help="requests per round (default 32)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded at once (default 16)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per cell (after one warm-up round)")
    p.add_argument("--cells", help="comma-separated substrings: run only the cells whose label contains one")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/profile-<model>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from safegene_runtime.stack import stack_adapters  # lazy: torch
    from safegene_runtime.testing.tiny import make_random_lora

    if args.model == "smollm2":
        from safegene_runtime.models import prepare_smollm2

        base = prepare_smollm2()
    else:
        base = Path(args.model).resolve()
    work = Path(tempfile.mkdtemp(prefix="safegene-profile-"))
    task = make_random_lora(work / "task", base, rank=16, seed=1)
    safety = make_random_lora(work / "safety", base, rank=16, seed=100)
    stacked = stack_adapters(task, safety, {"layers": {}, "default": 1.0}, out=work / "stacked")
    adapters = {"task": task, "stacked": stacked}
    cells = [c for c in CELLS if not args.cells or any(s.strip() in c[0] for s in args.cells.split(","))]
    rows = []
    for label, dtype, compile_, adapter, rank, ops, isa in cells:
        argv_ = [sys.executable, str(REPO / "bench" / "offline.py"), "--model", str(base), "--dtype", dtype,
                 "--batch", str(args.batch), "--max-num-seqs", str(args.max_num_seqs), "--max-tokens",
                 str(args.max_tokens), "--rounds", str(args.rounds)]
        if compile_:
            argv_.append("--compile")
        if adapter:
            argv_ += ["--lora", str(adapters[adapter]), "--max-lora-rank", str(rank)]
        env = bench_env()
        env[CPU_LORA_ENV] = ops or "stock"
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        t0 = time.monotonic()
        proc = subprocess.run(argv_, env=env, capture_output=True, text=True, timeout=3600)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{label}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"cell": label, "error": proc.stderr[-500:]})
            continue
        res = json.loads(line[7:])
        fallback = "fallback to torch linear" in proc.stderr
        rows.append({"cell": label, "tok_s": res["tok_s"], "median": median(res["tok_s"]), "start_s": res["start_s"],
                     "onednn_fallback": fallback, "seconds": time.monotonic() - t0})
        print(f"{label:<40} {median(res['tok_s']):>7.1f} tok/s  rounds {', '.join(f'{x:.1f}' for x in res['tok_s'])}"
              f"  start {res['start_s']:.0f}s" + ("  (oneDNN fallback)" if fallback else ""), flush=True)
    out = args.out or REPO / "bench" / "results" / f"profile-{Path(args.model).name}.json"
    from safegene_runtime.artifacts import atomic_write_json

    atomic_write_json(out, {"schema": "safegene.bench.profile/v1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "command": " ".join(["python", "bench/cpu_profile.py", *(argv or sys.argv[1:])]),
                            "batch": args.batch, "max_num_seqs": args.max_num_seqs, "max_tokens": args.max_tokens,
                            "rounds": args.rounds, "cpu_flags_bf16": _bf16(), "rows": rows})
    print(f"\n| cell | output tok/s (median) | per round | engine start (s) |\n|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['cell']} | failed | | |")
            continue
        print(f"| {r['cell']}{' (oneDNN fallback)' if r['onednn_fallback'] else ''} | {r['median']:.1f} | "
              f"{', '.join(f'{x:.1f}' for x in r['tok_s'])} | {r['start_s']:.0f} |")
    print(f"\nwrote {out}")
    return 0


def _bf16() -> bool:
    from server.hardware import cpu_has_bf16  # lazy: torch

    return cpu_has_bf16()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
