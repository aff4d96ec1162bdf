"""Persisted digests: each named digest keeps the value the code produced before it had one home (these values are
in artifact manifests, coefficient files, server versions and the SmolLM2 study's stage hashes)."""

from __future__ import annotations

import hashlib

from safegene_runtime.artifacts import sha256_file
from safegene_runtime.coefficients import Coefficients
from safegene_runtime.digests import (ADAPTER_FILES, adapter_digest, chat_list_digest, json_digest,
                                      prompt_list_digest, prompt_set_digest)
from safegene_runtime.prompts import Example

TEXTS = ["How do I bake bread?", "Ünïcode — test", "  spaced   out  "]
CHATS = [Example(messages=[{"role": "user", "content": "Hi ça va?"}]),
         Example(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "x"}], response="y")]


def test_values_are_pinned():
    # recorded with the code of d7b9dd3 (run.digest, selection.prompt_set_info, calibrate.shot_set_info,
    # datasets.text_digest, Coefficients.digest)
    assert json_digest({"b": [1, 2.5, "é"], "a": None}) == \
        "21fddaeebc6c84f1b55624c41336b0e521adecf3e414f2eaa12789afd6167428"
    assert prompt_list_digest(TEXTS) == chat_list_digest(TEXTS) == \
        "904fa6d624f4f9bbce3b4d4fa48449c5153f178c6cbf40d72b658ab2719256a5"
    assert prompt_list_digest(CHATS) == "f2d3bfe5ba382b6f1ccf2138b778e6c0bb926a575c8d61a62ce83c035a66c7a5"
    assert chat_list_digest(CHATS) == "db38c58b9ce8025fa56b595266721cbd5961648aeee98cb729203c7d9e155bb4"
    assert prompt_set_digest(TEXTS) == "7633fe87a1bcbdb9d7531cd3a2713e7d489ab75aa6c2211b3c300f0a71cb71f5"
    assert prompt_set_digest(reversed([t.upper() + "!" for t in TEXTS])) == prompt_set_digest(TEXTS)
    assert Coefficients(layers={3: 0.5, 1: 1.25, 10: 0.0}, default=0.1).digest() == \
        "2e036c35db206ebfb1b281679e6645ae7bfff9f3b44443f3e75e4ab145ec0563"


def test_adapter_digest_covers_config_and_weights_only(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update(name.encode() + b"\0" + sha256_file(tmp_path / name).encode())
    assert ADAPTER_FILES == ("adapter_config.json", "adapter_model.safetensors")
    assert adapter_digest(tmp_path) == adapter_digest(str(tmp_path)) == h.hexdigest()
    (tmp_path / "manifest.json").write_text('{"id": "x"}')
    assert adapter_digest(tmp_path) == h.hexdigest()
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert adapter_digest(tmp_path) != h.hexdigest()
