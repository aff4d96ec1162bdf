"""Stage seeds (experiments/smollm2/seeds.py): a committed byte copy of a trained LoRA stage, restored only when
every file still has the sha256 recorded at save time."""

from __future__ import annotations

import json

import pytest

from experiments.smollm2 import seeds
from safegene_runtime.artifacts import sha256_file


@pytest.fixture
def stage(tmp_path):
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    base = make_tiny_model(tmp_path / "base")
    folder = tmp_path / "cache" / "align-0123456789ab"
    make_random_lora(folder / "lora", base, rank=4, seed=3)
    (folder / "stage.json").write_text(json.dumps({"stage": "align", "hash": "0123456789ab", "params": {"steps": 4},
                                                   "inputs": {}, "seconds": 12.5, "result": {"final_loss": 0.4}}))
    return folder


def test_a_saved_seed_restores_the_same_bytes_and_the_original_record(stage, tmp_path):
    root = tmp_path / "seeds"
    seed = seeds.save(stage, root)
    assert seeds.find(stage.name, root) == seed and seeds.find("align-ffffffffffff", root) is None
    assert not list(root.glob(".tmp-*"))  # written whole
    record = seeds.restore(seed, tmp_path / "restored")
    assert record == json.loads((stage / "stage.json").read_text())
    for name in seeds.LORA_FILES:
        assert sha256_file(tmp_path / "restored" / name) == sha256_file(stage / "lora" / name)


def test_a_changed_seed_file_is_refused_and_nothing_is_restored(stage, tmp_path):
    seed = seeds.save(stage, tmp_path / "seeds")
    weights = seed / "lora" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(seeds.SeedError, match="adapter_model.safetensors has sha256"):
        seeds.restore(seed, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_every_committed_seed_is_complete():
    """A seed in the repo has the files its record names, with those hashes (what a fresh machine restores)."""
    for seed in seeds.SEEDS.glob("align-*"):
        meta = json.loads((seed / seeds.SEED_FILE).read_text())
        assert meta["stage"] == seed.name and set(meta["files"]) == {f"lora/{n}" for n in seeds.LORA_FILES}
        assert all(sha256_file(seed / rel) == h for rel, h in meta["files"].items())
        assert meta["stage_json"]["hash"] == seed.name.split("-")[-1]
