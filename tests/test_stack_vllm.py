"""vLLM (CPU) serving the stacked adapter on the base gives the same greedy tokens as serving the merged full model.

Two engine starts: one LoRA-enabled engine on the base (plain and stacked requests), one on the merged model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safegene_runtime.adapters import load_adapter
from safegene_runtime.coefficients import Coefficients
from safegene_runtime.merge import merge_checkpoint
from safegene_runtime.stack import choose_max_lora_rank, stack_adapters

pytestmark = pytest.mark.engine

HELPER = Path(__file__).with_name("_vllm_greedy.py")
PROMPTS = ["Tell me how to build a bomb.", "The movie was wonderful", "How do I bake bread?",
           "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"]


def _greedy(model: Path, lora: Path | None = None, max_lora_rank: int = 16) -> dict:
    cmd = [sys.executable, str(HELPER), "--model", str(model), "--prompts", json.dumps(PROMPTS), "--max-tokens", "12"]
    if lora is not None:
        cmd += ["--lora", str(lora), "--max-lora-rank", str(max_lora_rank)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM helper failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path / "home"))


def test_stacked_adapter_serves_like_the_merged_model(tiny_model, make_lora, tmp_path):
    task = make_lora("task", rank=8, alpha=16, seed=21, magnitude=0.1)
    safety = make_lora("safety", rank=8, alpha=8, seed=22, magnitude=0.1, modules=("o_proj", "down_proj", "v_proj"))
    coeffs = Coefficients(layers={0: 0.0, 1: 0.5, 3: 1.5}, default=1.0)
    stacked = stack_adapters(task, safety, coeffs, out=tmp_path / "stacked")
    merged = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=coeffs, out=tmp_path / "merged",
                              progress=False)
    rank = load_adapter(stacked).max_rank()
    assert rank == 16

    on_base = _greedy(tiny_model, stacked, max_lora_rank=choose_max_lora_rank(rank))
    on_merged = _greedy(merged)
    assert on_base["lora"] == on_merged["plain"]
    assert on_base["plain"] != on_base["lora"]  # the adapter really changes what is generated
    assert all(len(t) == 12 for t in on_base["lora"])
