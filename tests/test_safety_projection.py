"""The filtered safety adapter of the projection pilot (experiments/smollm2/safety_projection.py): its math and the
second moments it reads from a model."""

from __future__ import annotations

import pytest
import torch

from experiments.smollm2 import safety_projection as sp


def _psd(d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, rank, generator=g, dtype=torch.float64)
    return x @ x.T / rank


def _effect(a, b, c):
    ba = b.double() @ a.double()
    return float(torch.einsum("ij,jk,ik->", ba, c, ba)) ** 0.5


def test_without_benign_variance_the_filter_keeps_the_adapter():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 16, generator=g), torch.randn(12, 4, generator=g)
    a2, stats = sp.filtered(a, b, _psd(16, 32, 0), torch.zeros(16, 16, dtype=torch.float64), mu=10.0)
    assert torch.allclose(a2, a, atol=1e-5) and stats["scale"] == pytest.approx(1.0)


def test_the_filter_cancels_the_benign_directions_and_keeps_the_harmful_effect():
    d = 16
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, d, generator=g), torch.randn(12, 4, generator=g)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    harm_dirs, benign_dirs = basis[:, :8], basis[:, 8:]
    floor = 1e-4 * torch.eye(d, dtype=torch.float64)  # each set has a little variance everywhere
    c_h, c_b = harm_dirs @ harm_dirs.T + floor, benign_dirs @ benign_dirs.T + floor
    ratios = []
    for mu in (1.0, 10.0, 100.0):
        a2, stats = sp.filtered(a, b, c_h, c_b, mu)
        assert a2.shape == a.shape and a2.dtype == a.dtype  # still a rank-4 LoRA pair with the same B
        assert _effect(a2, b, c_h) == pytest.approx(_effect(a, b, c_h), rel=1e-4)  # harmful effect kept
        assert stats["benign_effect_ratio"] == pytest.approx(_effect(a2, b, c_b) / _effect(a, b, c_b), rel=1e-4)
        assert stats["harmful_over_benign_after"] > stats["harmful_over_benign_before"]
        ratios.append(stats["benign_effect_ratio"])
    # stronger μ, less effect on benign inputs, down to what the benign set's floor in the harmful directions sees
    assert ratios[0] > ratios[1] >= ratios[2] - 1e-9 and ratios[2] < 0.05


def test_second_moments_are_the_token_mean_of_each_module_input_after_the_shared_prefix(tiny_model):
    from safegene_runtime.lora_forward import encode_prompts, load_causal_lm

    model, tok = load_causal_lm(tiny_model)
    texts = ["how are you today", "tell me a story about a dragon", "x"]
    mods = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"]
    mom = sp.second_moments(model, tok, texts, mods, batch=2)
    assert set(mom) == {"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}  # k reads q's input
    # by hand, one prompt at a time: layer 0's q input is input_layernorm of the embeddings
    ids = encode_prompts(tok, texts, max_tokens=160)
    probe = encode_prompts(tok, ["a", "b c"], max_tokens=160)
    prefix = next(i for i, (x, y) in enumerate(zip(*probe)) if x != y)
    acc, n = 0, 0
    with torch.no_grad():
        for seq in ids:
            h = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[0]
            x = model.model.layers[0].input_layernorm(h)[0, prefix:].double()
            acc, n = acc + x.T @ x, n + x.shape[0]
    assert torch.allclose(mom["model.layers.0.self_attn.q_proj"], acc / n, rtol=1e-4, atol=1e-6)
    c = mom["model.layers.1.mlp.down_proj"]
    assert c.shape == (256, 256) and torch.allclose(c, c.T) and torch.linalg.eigvalsh(c).min() > -1e-8


def test_a_projected_candidate_is_calibrated_and_served_with_its_filtered_adapter(tmp_path, monkeypatch):
    """v2_sweep: a candidate in PROJECTED gets S_μ (built by safety_projection.build) wherever v2a gets S."""
    import json

    from experiments.smollm2 import family, v2_sweep

    assert v2_sweep.safety_of("v2a") == family.FAMILY / "safety"
    assert v2_sweep.PROJECTED["v2p"] == 3.0 and v2_sweep.CANDIDATES["v2p"] == v2_sweep.CANDIDATES["v2a"]
    with pytest.raises(SystemExit, match="built from"):  # S_μ is made from the shipped family only
        v2_sweep.safety_of("v2p", tmp_path)
    filtered = tmp_path / "safety-mu3"
    filtered.mkdir()
    (filtered / "marker").write_text("S_3")
    built = []
    monkeypatch.setattr(sp, "build", lambda out, mu: built.append((out, mu)) or filtered)
    assert v2_sweep.safety_of("v2p") == filtered and built == [(sp.OUT, 3.0)]
    # the layout serves the shipped task adapters with v2p's coefficients and S_3 as the safety adapter
    out = tmp_path / "sweep"
    for name in family.family_tasks(family.FAMILY):
        (out / "v2p" / name).mkdir(parents=True)
        (out / "v2p" / name / "coefficients.json").write_text(json.dumps({"candidate": name}))
    root = v2_sweep.layout("v2p", out)
    assert (root / "safety" / "marker").read_text() == "S_3"
    assert json.loads((root / "tasks" / "topic-clean" / "coefficients.json").read_text()) == {
        "candidate": "topic-clean"}


@pytest.mark.parametrize("mu", ["-1", "nan"])
def test_a_negative_filter_strength_is_refused_before_anything_is_built(tmp_path, capsys, mu):
    with pytest.raises(SystemExit) as e:
        sp.main(["build", "--out", str(tmp_path / "p"), "--mu", "3", "--mu", mu])
    assert e.value.code == 2 and "--mu must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
