"""The offline anchor: vLLM's own ``LLM`` class on the same model, adapter, batch and length as a serving run.

It answers "how fast can this machine decode this model at all?", with no HTTP, no API server and no middleware,
so a serving number can be read as a fraction of it. One configuration per process (vLLM's engine spawns workers
and keeps state per process): ``bench/serving.py`` runs it as a child, or run it by hand:

    .venv/bin/python bench/offline.py --model DIR [--lora DIR --max-lora-rank 32] [--dtype float32] [--compile]

Each round sends ``--batch`` chat prompts at once, each decoding exactly ``--max-tokens`` tokens (``ignore_eos``,
greedy); throughput is output tokens / wall time of ``LLM.chat``. The first round warms up and is not reported.
Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.prompts import PROMPTS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/offline.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="base model folder (HF safetensors)")
    p.add_argument("--lora", help="a LoRA folder: every request uses it (else the base model, LoRA off)")
    p.add_argument("--max-lora-rank", type=int, default=16, help="the engine's --max-lora-rank (with --lora)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compile", action="store_true", help="let vLLM compile (default: --enforce-eager)")
    p.add_argument("--batch", type=int, default=32, help="requests per round, all submitted at once")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    t0 = time.monotonic()
    # lazy: vLLM takes seconds to import, and --help must not
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=args.model, dtype=args.dtype, enforce_eager=not args.compile, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, seed=0, enable_lora=bool(args.lora),
              **({"max_lora_rank": args.max_lora_rank, "max_loras": 1} if args.lora else {}))
    start_s = time.monotonic() - t0
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    req = LoRARequest("task", 1, args.lora) if args.lora else None
    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.batch)]
    rates = []
    for rnd in range(args.rounds + 1):
        t = time.perf_counter()
        outs = llm.chat(chats, params, lora_request=req, use_tqdm=False)
        wall = time.perf_counter() - t
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        if rnd:  # round 0 warms up
            rates.append(tokens / wall)
    print("RESULT " + json.dumps({"tok_s": rates, "start_s": start_s, "batch": args.batch,
                                  "max_tokens": args.max_tokens, "dtype": args.dtype, "compile": args.compile,
                                  "lora": bool(args.lora), "max_lora_rank": args.max_lora_rank if args.lora else None}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
