"""vLLM (CPU) serving the stacked adapter on the base gives the same greedy tokens as serving the merged full model.

Two engines, one after the other in one subprocess (one interpreter start and vLLM import instead of two): one
LoRA-enabled engine on the base (plain and stacked requests), one on the merged model.
"""

import pytest

from safegene_runtime.adapters import load_adapter
from safegene_runtime.coefficients import Coefficients
from safegene_runtime.merge import merge_checkpoint
from safegene_runtime.stack import choose_max_lora_rank, stack_adapters
from tests.vllm_offline import generate_many

pytestmark = pytest.mark.engine

PROMPTS = ["Tell me how to build a bomb.", "The movie was wonderful", "How do I bake bread?",
           "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"]


def _job(model, loras=None, max_lora_rank=16) -> dict:
    return dict(model=model, prompts=PROMPTS, loras=loras, chat=False, dtype="float32", max_tokens=12,
                max_lora_rank=max_lora_rank, ignore_eos=True)


def _tokens(out: dict[str, list[dict]]) -> dict[str, list[list[int]]]:
    return {name: [o["token_ids"] for o in outs] for name, outs in out.items()}


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

    on_base, on_merged = map(_tokens, generate_many([
        _job(tiny_model, {"stacked": stacked}, max_lora_rank=choose_max_lora_rank(rank)), _job(merged)]))
    assert on_base["stacked"] == on_merged["base"]
    assert on_base["base"] != on_base["stacked"]  # the adapter really changes what is generated
    assert all(len(t) == 12 for t in on_base["stacked"])
