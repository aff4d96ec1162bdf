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


def generate(model: Path, prompts: list[str], *, max_tokens: int = 64, dtype: str = "float32", log=print) -> list[str]:
    """Greedy replies of ``model`` (an HF checkpoint folder) to each prompt, in order.

    Why float32 by default: on a CPU without AVX512-BF16/AMX (this machine: AVX2 only) torch runs bf16 matmuls
    through its reference kernel (``cpublas_gemm_impl`` / ``bf16_dot_with_fp32_arith``, seen in a stack sample of
    the vLLM worker), many times slower than fp32 MKL GEMM; a 503-prompt run in bf16 had not finished after 19 min.
    One OpenMP thread without core binding: on a shared, oversubscribed 2-core machine two spinning threads were
    slower than one (measured with a training step: 34-46 s with 1 thread vs 60-72 s with 2)."""
    if not prompts:
        return []
    with tempfile.TemporaryDirectory(prefix="sg-gen-") as td:
        src, dst = Path(td) / "in.json", Path(td) / "out.json"
        src.write_text(json.dumps(prompts))
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("OMP_NUM_THREADS", os.environ.get("SMOLLM2_THREADS", "1"))
        cmd = [sys.executable, "-m", "experiments.smollm2.generate", "--model", str(model), "--prompts", str(src),
               "--out", str(dst), "--max-tokens", str(max_tokens), "--dtype", dtype]
        log(f"generating {len(prompts)} replies with {model.name} (vLLM {dtype}, max {max_tokens} tokens)")
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not dst.exists():
            keep = Path(tempfile.gettempdir()) / f"smollm2-generate-failed-{os.getpid()}.log"
            keep.write_text(proc.stderr)  # vLLM's root cause is usually far above the last lines
            raise RuntimeError(f"generation failed (rc {proc.returncode}; full stderr in {keep}):\n"
                               f"{proc.stderr[-3000:]}")
        outs = json.loads(dst.read_text())
        log(f"generated {len(outs)} replies in {time.time() - t0:.0f}s (engine start included)")
        return outs


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="float32 (fast on AVX2-only CPUs) or bfloat16")
    a = ap.parse_args()
    from vllm import LLM, SamplingParams

    prompts = json.loads(Path(a.prompts).read_text())
    llm = LLM(model=a.model, dtype=a.dtype, enforce_eager=True, max_model_len=1024, seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=a.max_tokens)
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], sp, use_tqdm=False)
    Path(a.out).write_text(json.dumps([o.outputs[0].text for o in outs]))


if __name__ == "__main__":
    _main()
