"""Merging: full checkpoint = PEFT-merged base + stacked adapter; sharded bases; dtype; refusals."""

import json

import pytest
import torch

from safegene_runtime.adapters import AdapterError, load_adapter
from safegene_runtime.artifacts import read_manifest
from safegene_runtime.checkpoints import Checkpoint
from safegene_runtime.coefficients import Coefficients, save_coefficients
from safegene_runtime.merge import merge_checkpoint
from safegene_runtime.stack import stack_adapters
from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

LAMBDAS = Coefficients(layers={0: 0.0, 3: 2.0}, default=0.8)
X = torch.tensor([[1, 5, 9, 30, 77, 120, 3, 44]])


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path / "home"))


@pytest.fixture
def adapters(make_lora):
    task = make_lora("task", rank=4, alpha=8, seed=2)
    safety = make_lora("safety", rank=6, alpha=6, modules=("o_proj", "down_proj", "v_proj"), seed=3)
    return task, safety


def _logits(path):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(X).logits


def _peft_merged_logits(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().eval()
    with torch.no_grad():
        return m(X).logits


def test_merged_equals_peft_merged_stack(tiny_model, adapters, tmp_path):
    task, safety = adapters
    stacked = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "stacked")
    merged = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=LAMBDAS, out=tmp_path / "merged",
                              progress=False)
    ref = _peft_merged_logits(tiny_model, stacked)
    got = _logits(merged)
    assert (ref - _logits(tiny_model)).abs().max() > 1e-2
    assert torch.allclose(got, ref, atol=2e-5), (got - ref).abs().max()

    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "model.safetensors", "manifest.json"} <= names
    man = read_manifest(merged)
    assert man["kind"] == "merged_model"
    assert [e["role"] for e in man["lineage"]] == ["base", "task", "safety", "coefficients"]
    assert man["lineage"][3]["digest"] == LAMBDAS.digest()
    assert man["merged_modules"] == 28  # every task module; safety modules share them
    # untouched tensors are copied bit for bit
    a, b = Checkpoint(tiny_model), Checkpoint(merged)
    assert torch.equal(a.get("model.embed_tokens.weight"), b.get("model.embed_tokens.weight"))
    assert torch.equal(a.get("model.layers.1.input_layernorm.weight"), b.get("model.layers.1.input_layernorm.weight"))


def test_task_or_safety_alone_and_sharded_base(tiny_model, adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    task, safety = adapters
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(sharded, max_shard_size="1MB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((tiny_model / f).read_bytes())
    assert Checkpoint(sharded).is_sharded

    only_task = merge_checkpoint(sharded, task=task, out=tmp_path / "t", progress=False)
    ck = Checkpoint(only_task)
    assert ck.is_sharded and ck.shards() == Checkpoint(sharded).shards()
    assert json.loads((only_task / "model.safetensors.index.json").read_text())["weight_map"] == json.loads(
        (sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert torch.allclose(_logits(only_task), _peft_merged_logits(tiny_model, task), atol=2e-5)

    only_safety = merge_checkpoint(tiny_model, safety=safety, coefficients=LAMBDAS, out=tmp_path / "s",
                                   progress=False)
    s = load_adapter(safety)
    a, b = Checkpoint(tiny_model), Checkpoint(only_safety)
    for m in s.modules():
        lam = LAMBDAS.of(int(m.split(".")[2]))
        diff = b.get(f"{m}.weight") - a.get(f"{m}.weight")
        assert torch.allclose(diff, lam * s.delta(m), atol=1e-6), m
    assert read_manifest(only_safety)["merged_modules"] == 3 * 3  # layer 0 has λ = 0


def test_a_store_merge_of_the_same_inputs_is_reused_and_any_changed_input_merges_again(tiny_model, adapters,
                                                                                     tmp_path, monkeypatch):
    import shutil

    import safegene_runtime.merge as merge_mod

    task, safety = adapters
    store = tmp_path / "store"
    first = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=LAMBDAS, store=store, name="m",
                             progress=False)
    calls = []
    real = merge_mod.ArtifactWriter
    monkeypatch.setattr(merge_mod, "ArtifactWriter", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=LAMBDAS, store=store, name="m",
                             progress=False)
    assert again == first and calls == []  # found by its inputs: nothing written
    other = Coefficients(layers={0: 0.5, 3: 2.0}, default=0.8)
    changed = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=other, store=store, name="m",
                               progress=False)
    assert changed != first and calls == [1]
    first_id = read_manifest(first)["id"]
    shutil.rmtree(first)  # gone from the store: merged again, to the same content id
    back = merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=LAMBDAS, store=store, name="m",
                            progress=False)
    assert back == first and read_manifest(back)["id"] == first_id
    assert calls == [1, 1] and (back / "model.safetensors").is_file()
    (store / ".built-from.json").write_text("not json")  # a broken index costs a merge, never an error
    assert merge_checkpoint(tiny_model, task=task, safety=safety, coefficients=LAMBDAS, store=store, name="m",
                            progress=False) == first
    assert calls == [1, 1, 1]


def test_bf16_base_keeps_its_dtype(tmp_path, run_cli):
    base = make_tiny_model(tmp_path / "bf16", num_layers=1, dtype=torch.bfloat16)
    lora = make_random_lora(tmp_path / "lora", base, rank=2, modules=("q_proj",))
    coeffs = save_coefficients(tmp_path / "c.json", Coefficients.uniform(1.0))
    res = run_cli("merge", "--base", base, "--safety", lora, "--coefficients", coeffs, "--out", tmp_path / "m",
                  "--no-progress")
    assert res.code == 0, res.err and "merged model:" in res.out
    ck = Checkpoint(tmp_path / "m")
    assert {ck.dtype(k) for k in ck.keys()} == {torch.bfloat16}
    q = "model.layers.0.self_attn.q_proj.weight"
    expected = (Checkpoint(base).get(q).float() + load_adapter(lora).delta(q[:-7])).to(torch.bfloat16)
    assert torch.equal(ck.get(q), expected)


def test_delta_retention_reports_what_a_bf16_merge_rounds_away(tmp_path):
    """A delta of about one bf16 step of W (a short fine-tune's safety delta) is partly lost in a bf16 merge."""
    f32 = make_tiny_model(tmp_path / "f32", num_layers=1, dtype=torch.float32)
    b16 = make_tiny_model(tmp_path / "b16", num_layers=1, dtype=torch.bfloat16)
    keep = {}
    for base, size, magnitude in ((f32, "small", 0.001), (b16, "big", 0.5), (b16, "small", 0.001)):
        lora = make_random_lora(tmp_path / f"{size}-{base.name}", base, rank=2, modules=("q_proj",),
                                magnitude=magnitude, seed=1)
        m = merge_checkpoint(base, task=lora, out=tmp_path / f"m-{base.name}-{size}", progress=False)
        keep[(base.name, size)] = read_manifest(m)["delta_retention"]
    assert keep[("f32", "small")] > 0.999  # float32 keeps everything
    assert keep[("b16", "big")] > 0.9  # a large delta survives bf16 rounding mostly
    assert keep[("b16", "small")] < keep[("b16", "big")] - 0.05, keep  # a small one loses a visible share


def test_float32_merge_of_a_bf16_base_keeps_the_whole_delta(tmp_path, run_cli):
    """``--dtype float32``: every tensor and config.json say float32, and W' − W is exactly the fp32 delta."""
    b16 = make_tiny_model(tmp_path / "b16", num_layers=1, dtype=torch.bfloat16)
    lora = make_random_lora(tmp_path / "lora", b16, rank=2, modules=("q_proj",), magnitude=0.001, seed=1)
    res = run_cli("merge", "--base", b16, "--task", lora, "--out", tmp_path / "m", "--dtype", "float32",
                  "--no-progress")
    assert res.code == 0, res.err
    assert "delta retention 1.000" in res.out
    ck = Checkpoint(tmp_path / "m")
    assert {ck.dtype(k) for k in ck.keys()} == {torch.float32}
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == "float32"
    q = "model.layers.0.self_attn.q_proj.weight"
    base_q = Checkpoint(b16).get(q).float()
    assert torch.equal(ck.get(q), base_q + load_adapter(lora).delta(q[:-7]))
    # untouched tensors are the bf16 values, widened exactly
    assert torch.equal(ck.get("model.embed_tokens.weight"), Checkpoint(b16).get("model.embed_tokens.weight").float())
    man = read_manifest(tmp_path / "m")
    assert man["delta_retention"] == 1.0 and man["lineage"][-1] == {"role": "dtype", "dtype": "float32"}
    # the same merge in the base's own dtype is another artifact, with less of the delta
    kept = read_manifest(merge_checkpoint(b16, task=lora, out=tmp_path / "m16", progress=False))["delta_retention"]
    assert kept < 0.95
    bad = run_cli("merge", "--base", b16, "--task", lora, "--out", tmp_path / "bad", "--dtype", "int8")
    assert bad.code != 0 and "unknown dtype 'int8'" in bad.err and not (tmp_path / "bad").exists()


def test_refusals(tiny_model, adapters, tmp_path, run_cli):
    task, safety = adapters
    dest = tmp_path / "out"
    dest.mkdir()

    def refuse(exc, pattern, **kw):
        with pytest.raises(exc, match=pattern):
            merge_checkpoint(kw.pop("base", tiny_model), out=dest / "x", progress=False, **kw)
        assert [p.name for p in dest.iterdir()] == []

    refuse(ValueError, "nothing to merge")
    refuse(ValueError, "needs coefficients", safety=safety)
    refuse(ValueError, "without a safety adapter", task=task, coefficients=LAMBDAS)
    refuse(AdapterError, "not finite|finite number", safety=safety,
           coefficients=Coefficients(layers={1: float("nan")}))
    other = make_tiny_model(tmp_path / "other", seed=4)
    refuse(AdapterError, "refusing to merge into another model", base=other, task=task)
    wide = make_tiny_model(tmp_path / "wide", intermediate_size=384)
    wide_lora = make_random_lora(tmp_path / "wide_lora", wide, rank=2, modules=("up_proj",))
    refuse(AdapterError, "refusing to merge into another model", task=wide_lora)
    cfg = json.loads((wide_lora / "adapter_config.json").read_text())
    (wide_lora / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "org/wide"}))
    refuse(AdapterError, r"module model\.layers\.0\.mlp\.up_proj has delta shape \(384, 128\)", task=wide_lora)
    refuse(Exception, "does not exist", base=tmp_path / "nope", task=task)
    res = run_cli("merge", "--base", tiny_model, "--safety", safety, "--out", dest / "y")
    assert res.code == 1 and "needs --coefficients" in res.err
    assert [p.name for p in dest.iterdir()] == []
