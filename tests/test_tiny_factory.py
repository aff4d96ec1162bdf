import json

import torch
from safetensors.torch import load_file

from safegene_runtime.adapters import load_adapter
from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model


def test_tiny_model_is_deterministic_and_chat_ready(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = make_tiny_model(tmp_path / "again")
    a, b = load_file(str(tiny_model / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64  # vLLM CPU attention needs head_dim >= 64

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("Any text, even ünïcödé!")["input_ids"]) == "Any text, even ünïcödé!"

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or out[0, -1].item() == tok.eos_token_id


def test_random_lora_is_peft_loadable_and_changes_output(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = make_random_lora(tmp_path / "lora", tiny_model, rank=4, seed=3)
    again = make_random_lora(tmp_path / "lora2", tiny_model, rank=4, seed=3)
    assert (lora / "adapter_model.safetensors").read_bytes() == (again / "adapter_model.safetensors").read_bytes()

    ad = load_adapter(lora)
    assert ad.max_rank() == 4 and len(ad.modules()) == 4 * 7 and ad.layers() == [0, 1, 2, 3]

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    x = torch.tensor([[1, 5, 9, 30, 77]])
    ref = base(x).logits
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    got = peft_model(x).logits
    assert (got - ref).abs().max() > 1e-3  # the adapter really changes the output

    # Our reading of the adapter's math equals PEFT's: merge our deltas by hand and compare logits.
    manual = AutoModelForCausalLM.from_pretrained(tiny_model)
    sd = manual.state_dict()
    with torch.no_grad():
        for m in ad.modules():
            sd[f"{m}.weight"] += ad.delta(m)
    manual.load_state_dict(sd)
    assert torch.allclose(manual(x).logits, got, atol=1e-5)
