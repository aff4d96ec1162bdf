"""Greedy generation with vLLM's offline engine, run as a subprocess by tests (the engine spawns workers, so it
needs a ``__main__`` guard and a fresh interpreter).

    python tests/_vllm_generate.py --model DIR [--lora NAME=DIR ...] --prompts '["hi", ...]' [--chat] [--max-tokens N]
    python tests/_vllm_generate.py --jobs jobs.json     # several models, one after the other, in one process

Tests call it through :func:`tests.vllm_offline.generate` (one model) or :func:`tests.vllm_offline.generate_many`
(a list of jobs: each engine still starts, but the interpreter and vLLM's import, ~10 s on 2 cores, are paid once).
Prints one JSON object: {"base": [{"text", "token_ids"}, ...], "<lora name>": [...], ...} (with --jobs: a list of
them, in job order).
"""

from __future__ import annotations

import argparse
import json
import os


def run(model: str, prompts: list[str], *, loras: list[tuple[str, str]], chat: bool, max_tokens: int, dtype: str,
        max_lora_rank: int, ignore_eos: bool) -> dict:
    """Greedy outputs of one engine on ``model``: the base, then each LoRA; the engine is shut down before returning."""
    import gc

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(
        model=model, dtype=dtype, enforce_eager=True, max_model_len=512, seed=0,
        enable_lora=bool(loras), max_lora_rank=max_lora_rank, max_loras=max(1, len(loras)),
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    requests = [None] + [LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(loras)]
    result = {}
    for req in requests:
        if chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, lora_request=req,
                            use_tqdm=False)
        else:
            outs = llm.generate(prompts, params, lora_request=req, use_tqdm=False)
        result["base" if req is None else req.lora_name] = [
            {"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids)} for o in outs
        ]
    llm.llm_engine.engine_core.shutdown()  # the next job's engine must not start beside this one
    del llm
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--jobs", help="JSON file: a list of {model, prompts, loras: {name: dir}, chat, max_tokens, "
                                   "dtype, max_lora_rank, ignore_eos}")
    ap.add_argument("--lora", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--prompts", help="JSON list of user messages")
    ap.add_argument("--chat", action="store_true", help="apply the model's chat template")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-lora-rank", type=int, default=16)
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    if args.jobs:
        with open(args.jobs) as f:
            jobs = json.load(f)
        result = [run(j["model"], j["prompts"], loras=list(j.get("loras", {}).items()), chat=j.get("chat", True),
                      max_tokens=j.get("max_tokens", 16), dtype=j.get("dtype", "auto"),
                      max_lora_rank=j.get("max_lora_rank", 16), ignore_eos=j.get("ignore_eos", False))
                  for j in jobs]
    else:
        if not args.model or args.prompts is None:
            ap.error("give --model and --prompts, or --jobs")
        result = run(args.model, json.loads(args.prompts), loras=[tuple(x.split("=", 1)) for x in args.lora],
                     chat=args.chat, max_tokens=args.max_tokens, dtype=args.dtype,
                     max_lora_rank=args.max_lora_rank, ignore_eos=args.ignore_eos)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
