"""Checkpoint: streaming access to single-file and sharded safetensors folders."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from safegene_runtime.checkpoints import Checkpoint, CheckpointError, model_identity


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def sharded(tiny_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(out, max_shard_size="1MB")
    return out


def test_single_file_checkpoint(tiny_model):
    ck = Checkpoint(tiny_model)
    ref = load_file(str(tiny_model / "model.safetensors"))
    assert ck.keys() == sorted(ref) and not ck.is_sharded and ck.shards() == ["model.safetensors"]
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(ck.get(name), ref[name])
    assert ck.shape(name) == (128, 256) and ck.dtype(name) == torch.float32
    assert ck.nbytes(name) == 128 * 256 * 4
    assert ck.get(name, torch.bfloat16).dtype == torch.bfloat16
    assert ck.config["model_type"] == "llama"
    mods = ck.linear_modules()
    assert len(mods) == 4 * 7
    assert mods[:3] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                        "model.layers.0.self_attn.v_proj"]
    assert mods[-1] == "model.layers.3.mlp.down_proj"
    assert ck.linear_modules(["v_proj"]) == [f"model.layers.{i}.self_attn.v_proj" for i in range(4)]
    with pytest.raises(CheckpointError, match="no tensor named nope"):
        ck.get("nope")


def test_sharded_checkpoint_reads_the_same_tensors(tiny_model, sharded):
    single, ck = Checkpoint(tiny_model), Checkpoint(sharded)
    assert ck.is_sharded and len(ck.shards()) > 1
    assert ck.keys() == single.keys()
    for name in ck.keys():
        assert ck.shape(name) == single.shape(name)
        assert torch.equal(ck.get(name), single.get(name)), name
    assert ck.linear_modules() == single.linear_modules()
    assert sum(len(ck.shard_keys(s)) for s in ck.shards()) == len(ck)


def test_errors_name_the_problem(tiny_model, sharded, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is not a folder"):
        Checkpoint(tiny_model / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no safetensors files at all"):
        Checkpoint(empty)
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pytorch_model.bin; convert to safetensors"):
        Checkpoint(empty)

    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (broken / victim).unlink()
    with pytest.raises(CheckpointError, match=f"shard {victim} listed in model.safetensors.index.json is missing"):
        Checkpoint(broken)

    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Checkpoint(trunc)


def test_model_identity(tiny_model):
    ident = model_identity(tiny_model)
    assert ident["model_type"] == "llama" and ident["hidden_size"] == 128 and ident["num_hidden_layers"] == 4
    assert len(ident["fingerprint"]) == 64 and ident == model_identity(tiny_model)


def test_weights_fingerprint_ignores_sharding_but_not_values(tiny_model, sharded, tmp_path):
    from safegene_runtime.checkpoints import weights_fingerprint
    from safegene_runtime.testing.tiny import make_perturbed_model

    assert weights_fingerprint(sharded) == weights_fingerprint(tiny_model)
    assert weights_fingerprint(make_perturbed_model(tiny_model, tmp_path / "p")) != weights_fingerprint(tiny_model)


def test_every_tensor_reads_back_exactly_and_truncation_is_named(tiny_model, tmp_path):
    ck = Checkpoint(tiny_model)
    ref = load_file(str(tiny_model / "model.safetensors"))
    assert all(torch.equal(ck.get(n), ref[n]) for n in ref)

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 1000])
    short = Checkpoint(cut)  # the header is intact, the last tensor is not
    last = max(short.keys(), key=lambda n: short._info[n]["data_offsets"][1])
    with pytest.raises(CheckpointError, match=f"truncated: tensor {last}"):
        short.get(last)


def test_built_for_and_check_same_base(tiny_model, make_lora, tmp_path):
    """One base-identity check for stacking and merging: the manifest's fingerprint, else the local base folder's;
    nothing to check when the adapter names no readable local base."""
    from safegene_runtime.adapters import AdapterError, load_adapter
    from safegene_runtime.checkpoints import built_for, check_same_base, weights_fingerprint
    from safegene_runtime.testing.tiny import make_tiny_model

    lora = load_adapter(make_lora())
    fp = weights_fingerprint(tiny_model)
    assert built_for(lora) == (fp, str(lora.config.base_model_name_or_path))
    assert built_for(lora, {"base_model": {"weights_fingerprint": "f" * 64, "path": "/x"}}) == ("f" * 64, "/x")
    lora.config.base_model_name_or_path = "org/hub-model"
    assert built_for(lora) == (None, "org/hub-model")
    other = Checkpoint(make_tiny_model(tmp_path / "other", seed=4))
    check_same_base(lora, "task adapter", other, but="b", refusing="r")  # says nothing: nothing to check
    with pytest.raises(AdapterError, match=r"^task adapter .* was built for base model /x \(fingerprint f{12}\) but "
                                           r"the base .* \(fingerprint [0-9a-f]{12}\): refusing$"):
        check_same_base(lora, "task adapter", other, manifest={"base_model": {"weights_fingerprint": "f" * 64,
                                                                              "path": "/x"}},
                        but=f"the base {other.path}", refusing="refusing")
