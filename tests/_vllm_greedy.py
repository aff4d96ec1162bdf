"""Greedy token ids from vLLM's offline engine, as JSON on stdout (for tests that must not import vLLM in-process).

    python tests/_vllm_greedy.py --model DIR [--lora DIR --max-lora-rank R] --prompts '["hi", ...]' [--max-tokens 12]

Prints one line ``RESULT {"plain": [[ids...], ...], "lora": [[ids...], ...] | null}``: ``plain`` from requests
without an adapter, ``lora`` from the same prompts with the adapter (one LoRA-enabled engine serves both).
vLLM's offline ``LLM`` spawns workers, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--lora")
    p.add_argument("--max-lora-rank", type=int, default=16)
    p.add_argument("--prompts", required=True, help="JSON list of prompt strings")
    p.add_argument("--max-tokens", type=int, default=12)
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    prompts = json.loads(args.prompts)
    kw = dict(enable_lora=True, max_lora_rank=args.max_lora_rank, max_loras=1) if args.lora else {}
    llm = LLM(model=args.model, dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              max_num_seqs=8, **kw)
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)

    def ids(outputs):
        return [list(o.outputs[0].token_ids) for o in outputs]

    result = {"plain": ids(llm.generate(prompts, sp, use_tqdm=False)), "lora": None}
    if args.lora:
        req = LoRARequest("stacked", 1, os.path.abspath(args.lora))
        result["lora"] = ids(llm.generate(prompts, sp, lora_request=req, use_tqdm=False))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
