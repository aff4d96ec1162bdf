"""Run ``tests/_vllm_generate.py`` (vLLM's offline engine) in a fresh interpreter and return its greedy outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).with_name("_vllm_generate.py")


def generate(model: Path, prompts: list[str], *, loras: dict[str, Path] | None = None, chat: bool = True,
             dtype: str = "auto", max_tokens: int = 16, max_lora_rank: int = 16, ignore_eos: bool = False,
             timeout: float = 900) -> dict[str, list[dict]]:
    """{"base": [{"text", "token_ids"}, ...], "<lora name>": [...]} for the prompts, greedy."""
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--prompts", json.dumps(prompts),
           "--max-tokens", str(max_tokens), "--dtype", dtype, "--max-lora-rank", str(max_lora_rank)]
    if chat:
        cmd.append("--chat")
    if ignore_eos:
        cmd.append("--ignore-eos")
    for name, path in (loras or {}).items():
        cmd += ["--lora", f"{name}={Path(path).resolve()}"]
    return _run(cmd, timeout)


def generate_many(jobs: list[dict], *, timeout: float = 900) -> list[dict[str, list[dict]]]:
    """:func:`generate` for several models in ONE subprocess (engines one after the other); ``jobs`` take
    :func:`generate`'s keyword names plus ``model`` and ``prompts``. Returns one result per job, in order."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{**j, "model": str(j["model"]),
                    "loras": {k: str(Path(v).resolve()) for k, v in (j.get("loras") or {}).items()}}
                   for j in jobs], f)
    try:
        return _run([sys.executable, str(SCRIPT), "--jobs", f.name], timeout)
    finally:
        os.unlink(f.name)


def _run(cmd: list[str], timeout: float):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])
