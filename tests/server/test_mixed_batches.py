"""A base-model request that shares engine steps with LoRA requests answers exactly as it does alone.

vLLM's CPU LoRA ops give base-model tokens (LoRA index -1) the adapter of the last LoRA slot; the server's grouped
kernels (server/cpu_lora.py, on by default) give them none. The live server has ``max_loras: 2``, so two adapters in
flight fill the last slot.
"""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.engine

PROMPT = "The capital of France is"
GREEDY = {"max_tokens": 12, "temperature": 0.0, "extra_body": {"ignore_eos": True}}


def test_base_answer_is_the_same_beside_lora_requests(live_server):
    client = live_server.client()
    alone = client.completions.create(model=live_server.base_model, prompt=PROMPT, **GREEDY).choices[0].text
    stop = threading.Event()
    errors: list[BaseException] = []

    def lora_load(model: str) -> None:
        c = live_server.client()
        try:
            while not stop.is_set():
                c.completions.create(model=model, prompt="Tell me a long story about the sea.", max_tokens=48,
                                     temperature=0.0, extra_body={"ignore_eos": True})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=lora_load, args=(m,)) for m in ("alpha", "beta")]
    for t in threads:
        t.start()
    try:
        beside = [client.completions.create(model=live_server.base_model, prompt=PROMPT, **GREEDY).choices[0].text
                  for _ in range(4)]
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert beside == [alone] * len(beside), (alone, beside)
