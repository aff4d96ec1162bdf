"""Stage 1 extraction: truncated SVD of aligned − degraded, the exact LoRA path, manifest, refusals."""

import json

import pytest
import torch

from safegene_runtime.adapters import AdapterError, load_adapter
from safegene_runtime.artifacts import ArtifactError, fingerprint, read_manifest
from safegene_runtime.checkpoints import Checkpoint, weights_fingerprint
from safegene_runtime.extract import choose_rank, extract_safety_adapter
from safegene_runtime.testing.tiny import make_perturbed_model, make_tiny_model


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def degraded(tiny_model, tmp_path_factory):
    return make_perturbed_model(tiny_model, tmp_path_factory.mktemp("deg") / "degraded", seed=1, relative_std=0.05)


def _delta(a: Checkpoint, d: Checkpoint, m: str) -> torch.Tensor:
    return a.get(f"{m}.weight", torch.float64) - d.get(f"{m}.weight", torch.float64)


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_full_rank_reproduces_the_difference(tiny_model, degraded, tmp_path):
    out = extract_safety_adapter(tiny_model, degraded, rank=10_000, out=tmp_path / "s", progress=False)
    ad = load_adapter(out)
    a, d = Checkpoint(tiny_model), Checkpoint(degraded)
    assert len(ad.modules()) == 28 and ad.config.lora_alpha == ad.config.r  # scale one
    for m in ad.modules():
        ref = _delta(a, d, m)
        assert ad.weights[m][0].shape[0] == min(ref.shape)  # capped at full rank
        assert ad.scaling(m) == 1.0
        assert (ad.delta(m).double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    man = read_manifest(out)
    assert man["kind"] == "safety_adapter" and man["method"]["name"] == "svd"
    assert man["energy_kept"] == pytest.approx(1.0, abs=1e-6)
    assert man["base_model"]["fingerprint"] == fingerprint(tiny_model)
    assert man["base_model"]["weights_fingerprint"] == weights_fingerprint(tiny_model)
    assert man["base_model"]["model_type"] == "llama" and man["base_model"]["hidden_size"] == 128
    assert [e["role"] for e in man["lineage"]] == ["aligned", "degraded"]
    assert all(len(e["sha256"]) == 64 for e in man["lineage"])


def test_rank_k_error_is_the_discarded_energy(tiny_model, degraded, tmp_path):
    k = 5
    out = extract_safety_adapter(tiny_model, degraded, rank=k, modules="q_proj,down_proj", out=tmp_path / "s",
                                 progress=False)
    ad, man = load_adapter(out), read_manifest(out)
    a, d = Checkpoint(tiny_model), Checkpoint(degraded)
    assert sorted({m.rsplit(".", 1)[1] for m in ad.modules()}) == ["down_proj", "q_proj"]
    total_kept = total = 0.0
    for m in ad.modules():
        ref = _delta(a, d, m)
        s = torch.linalg.svdvals(ref)
        err2 = float(((ad.delta(m).double() - ref) ** 2).sum())
        discarded = float((s[k:] ** 2).sum())
        assert err2 == pytest.approx(discarded, rel=1e-4)  # Eckart–Young
        assert man["modules"][m]["rank"] == k
        assert man["modules"][m]["energy_kept"] == pytest.approx(float((s[:k] ** 2).sum() / (s**2).sum()), rel=1e-5)
        total_kept += float((s[:k] ** 2).sum())
        total += float((s**2).sum())
    assert man["energy_kept"] == pytest.approx(total_kept / total, rel=1e-5)


def test_energy_picks_the_smallest_rank(tiny_model, degraded, tmp_path):
    out = extract_safety_adapter(tiny_model, degraded, energy=0.6, layers=[1, 2], out=tmp_path / "s", progress=False)
    ad, man = load_adapter(out), read_manifest(out)
    a, d = Checkpoint(tiny_model), Checkpoint(degraded)
    assert ad.layers() == [1, 2]
    ranks = set()
    for m in ad.modules():
        s2 = torch.linalg.svdvals(_delta(a, d, m)) ** 2
        share = torch.cumsum(s2, 0) / s2.sum()
        k = ad.weights[m][0].shape[0]
        ranks.add(k)
        assert share[k - 1] >= 0.6 and (k == 1 or share[k - 2] < 0.6), m
        assert man["modules"][m]["energy_kept"] >= 0.6
    assert len(ranks) > 1  # gate/up/down (256 wide) need more rank than q/k/v/o: rank_pattern is used
    assert ad.config.rank_pattern and all(ad.config.alpha_pattern[k] == v for k, v in ad.config.rank_pattern.items())
    assert all(ad.scaling(m) == 1.0 for m in ad.modules())


def test_choose_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert choose_rank(s, energy=9 / 14) == 1
    assert choose_rank(s, energy=9 / 14 + 1e-6) == 2
    assert choose_rank(s, energy=1.0) == 3
    assert choose_rank(s, rank=10) == 4
    with pytest.raises(ValueError):
        choose_rank(s, energy=1.5)


def test_degraded_as_lora_is_exact(tiny_model, make_lora, tmp_path):
    from safegene_runtime.merge import merge_checkpoint

    lora = make_lora(rank=4, alpha=16, modules=("q_proj", "up_proj"), seed=7)
    out = extract_safety_adapter(tiny_model, degraded_lora=lora, out=tmp_path / "s", progress=False)
    ad, src, man = load_adapter(out), load_adapter(lora), read_manifest(out)
    assert man["method"] == {"name": "negated_lora", "exact": True} and man["energy_kept"] == 1.0
    assert ad.modules() == src.modules()
    for m in ad.modules():
        assert torch.equal(ad.weights[m][0], src.weights[m][0])  # A_S = A_L
        assert torch.equal(ad.delta(m), -src.delta(m))
    # ... and it equals W(A) − W(D) with D = A + LoRA written out as a full model
    deg = merge_checkpoint(tiny_model, task=lora, out=tmp_path / "deg", progress=False)
    a, d = Checkpoint(tiny_model), Checkpoint(deg)
    for m in ad.modules():
        assert torch.allclose(ad.delta(m).double(), _delta(a, d, m), atol=1e-6)


def test_bf16_storage_and_cli(tiny_model, degraded, tmp_path, run_cli):
    res = run_cli("extract", "--aligned", tiny_model, "--degraded", degraded, "--rank", "3", "--modules", "v_proj",
                  "--dtype", "bf16", "--out", tmp_path / "s", "--no-progress")
    assert res.code == 0, res.err
    assert "safety adapter:" in res.out and "max rank 3" in res.out
    ad = load_adapter(tmp_path / "s")
    assert {a.dtype for a, _ in ad.weights.values()} == {torch.bfloat16} and len(ad.modules()) == 4
    again = run_cli("extract", "--aligned", tiny_model, "--degraded", degraded, "--rank", "3", "--modules", "v_proj",
                    "--dtype", "bf16", "--store", tmp_path / "store", "--no-progress")
    assert again.code == 0 and json.loads((tmp_path / "s" / "adapter_config.json").read_text())["r"] == 3


def test_refusals_leave_nothing_behind(tiny_model, degraded, tmp_path, run_cli):
    other = make_tiny_model(tmp_path / "models" / "two_layers", num_layers=2)
    with pytest.raises(ArtifactError, match=r"model\.layers\.2\..* is in the aligned model .* not in the degraded"):
        extract_safety_adapter(tiny_model, other, rank=2, out=tmp_path / "out" / "a", progress=False)
    wide = make_tiny_model(tmp_path / "models" / "wide", intermediate_size=384)
    with pytest.raises(ArtifactError, match=r"differ in the shape of model\.layers\.0\.mlp\.down_proj\.weight"):
        extract_safety_adapter(tiny_model, wide, rank=2, out=tmp_path / "out" / "b", progress=False)
    with pytest.raises(ArtifactError, match="identical weights"):
        extract_safety_adapter(tiny_model, tiny_model, rank=2, out=tmp_path / "out" / "c", progress=False)
    with pytest.raises(ArtifactError, match="does not exist"):
        extract_safety_adapter(tiny_model, tmp_path / "nope", rank=2, out=tmp_path / "out" / "d", progress=False)
    with pytest.raises(ValueError, match="unknown module kind"):
        extract_safety_adapter(tiny_model, degraded, modules="qkv", out=tmp_path / "out" / "e", progress=False)
    wrong_lora = tmp_path / "wrong_lora"
    from safegene_runtime.testing.tiny import make_random_lora

    make_random_lora(wrong_lora, wide, rank=2, modules=("down_proj",))
    with pytest.raises(AdapterError, match="made for another base model"):
        extract_safety_adapter(tiny_model, degraded_lora=wrong_lora, out=tmp_path / "out" / "f", progress=False)
    res = run_cli("extract", "--aligned", tiny_model, "--degraded", tmp_path / "nope", "--out", tmp_path / "out" / "g")
    assert res.code == 1 and "safegene extract: error:" in res.err and "does not exist" in res.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [] if (tmp_path / "out").exists() else True
    assert not (tmp_path / "out").exists() or _no_leftovers(tmp_path / "out")


def test_rank_options_do_not_apply_to_a_degraded_lora(tiny_model, make_lora, tmp_path):
    with pytest.raises(ValueError, match="do not apply with a degraded LoRA"):
        extract_safety_adapter(tiny_model, degraded_lora=make_lora(rank=2), rank=4, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
