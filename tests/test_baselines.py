"""Baselines: uniform safety arithmetic and Safe LoRA produce exact, PEFT-loadable adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safegene_runtime.adapters import load_adapter
from safegene_runtime.artifacts import read_manifest


pytestmark = pytest.mark.usefixtures("isolated_home", "one_thread")


@pytest.fixture
def pair(make_lora):
    task = make_lora("task", rank=4, seed=1, magnitude=0.05)
    safety = make_lora("safety", rank=8, alpha=8, seed=2, magnitude=0.05)
    return task, safety


def _peft_merged_weights(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def _base_weights(base: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(base / "model.safetensors"))


def test_uniform_is_task_plus_lambda_safety_exactly(pair, tiny_model, tmp_path):
    from safegene_runtime.baselines import uniform_safety

    task, safety = pair
    out = uniform_safety(task, safety, 0.7, store=tmp_path / "store")
    t, s, u = load_adapter(task), load_adapter(safety), load_adapter(out)
    assert set(u.weights) == set(t.weights) | set(s.weights)
    for m in u.weights:
        expected = t.delta(m) + 0.7 * s.delta(m)
        torch.testing.assert_close(u.delta(m), expected, rtol=1e-5, atol=1e-6)
    man = read_manifest(out)
    assert man["kind"] == "baseline_adapter"
    assert man["baseline"]["name"] == "uniform" and man["baseline"]["lambda"] == 0.7
    assert {e["role"] for e in man["lineage"]} >= {"task", "safety"}
    assert out.parent == (tmp_path / "store").resolve() and out.name.startswith("task-uniform0.7-")
    # PEFT reads it as the same sum.
    merged, base = _peft_merged_weights(tiny_model, out), _base_weights(tiny_model)
    m = "model.layers.2.mlp.down_proj"
    torch.testing.assert_close(merged[f"{m}.weight"], base[f"{m}.weight"] + t.delta(m) + 0.7 * s.delta(m),
                               rtol=1e-5, atol=1e-5)


def _dense_reference(t, s, m):
    """(cos(ΔT, CΔT), C·(s_T B_T)) computed densely, as in the Safe LoRA paper's code."""
    v = s.delta(m, torch.float64)
    c = v @ v.T / v.norm()
    a, b = t.weights[m]
    x = b.double() * t.scaling(m)
    dt = x @ a.double()
    pdt = c @ dt
    cos = float((dt * pdt).sum() / (dt.norm() * pdt.norm()))
    return cos, c @ x


def test_safe_lora_projects_exactly_the_low_similarity_modules(pair, tiny_model, tmp_path):
    from safegene_runtime.baselines import safe_lora

    task, safety = pair
    t, s = load_adapter(task), load_adapter(safety)
    sims = {m: _dense_reference(t, s, m)[0] for m in t.modules()}
    tau = sorted(sims.values())[len(sims) // 2]  # about half below
    out = safe_lora(task, safety=safety, threshold=tau, store=tmp_path / "store")
    o = load_adapter(out)
    info = read_manifest(out)["baseline"]
    expected_projected = {m for m, v in sims.items() if v < tau}
    assert 0 < len(expected_projected) < len(sims)
    assert set(info["projected"]) == expected_projected
    for m in t.modules():
        assert info["modules"][m]["similarity"] == pytest.approx(sims[m], rel=1e-6, abs=1e-9)
        a_t, b_t = t.weights[m]
        a_o, b_o = o.weights[m]
        assert o.scaling(m) == 1.0
        assert torch.equal(a_o, a_t)  # rank and A unchanged
        if m in expected_projected:
            torch.testing.assert_close(b_o.double(), _dense_reference(t, s, m)[1], rtol=1e-5, atol=1e-8)
            assert not torch.allclose(b_o, b_t * t.scaling(m))
        else:
            assert torch.equal(b_o, b_t * t.scaling(m))  # bit-identical (scale folded exactly as stacking does)
    # PEFT loads it, and its merged weights are base + the written deltas.
    merged, base = _peft_merged_weights(tiny_model, out), _base_weights(tiny_model)
    m = sorted(expected_projected)[0]
    torch.testing.assert_close(merged[f"{m}.weight"], base[f"{m}.weight"] + o.delta(m), rtol=1e-5, atol=1e-6)


def test_safe_lora_top_fraction_and_dense_source(pair, tiny_model, tmp_path):
    from safegene_runtime.baselines import safe_lora
    from safegene_runtime.testing.tiny import make_perturbed_model

    task, safety = pair
    out = safe_lora(task, safety=safety, top_fraction=0.25, store=tmp_path / "s1")
    info = read_manifest(out)["baseline"]
    sims = sorted(info["modules"].items(), key=lambda kv: kv[1]["similarity"])
    n = round(0.25 * len(sims))
    assert set(info["projected"]) == {m for m, _ in sims[:n]}
    # V from two checkpoints, streamed: same math as a dense V.
    degraded = make_perturbed_model(tiny_model, tmp_path / "degraded", seed=3, relative_std=0.05)
    out2 = safe_lora(task, aligned=tiny_model, degraded=degraded, threshold=0.35, store=tmp_path / "s2")
    info2 = read_manifest(out2)["baseline"]
    assert info2["source"] == "aligned_minus_degraded"
    a_w, d_w = _base_weights(tiny_model), _base_weights(degraded)
    t = load_adapter(task)
    m = "model.layers.1.self_attn.v_proj"
    v = (a_w[f"{m}.weight"] - d_w[f"{m}.weight"]).double()
    a, b = t.weights[m]
    dt = (b.double() * t.scaling(m)) @ a.double()
    pdt = (v @ v.T / v.norm()) @ dt
    cos = float((dt * pdt).sum() / (dt.norm() * pdt.norm()))
    assert info2["modules"][m]["similarity"] == pytest.approx(cos, rel=1e-6)
    assert info2["modules"][m]["projected"] == (cos < 0.35)


def test_baseline_cli(pair, run_cli, tmp_path):
    task, safety = pair
    r = run_cli("baseline", "uniform", "--task", task, "--safety", safety, "--lambda", "0.5", "--out", tmp_path / "u")
    assert r.code == 0, r.err
    assert read_manifest(tmp_path / "u")["baseline"]["lambda"] == 0.5
    r = run_cli("baseline", "safe-lora", "--task", task, "--safety", safety, "--out", tmp_path / "sl")
    assert r.code == 0, r.err
    assert "projected" in r.out and (tmp_path / "sl" / "adapter_model.safetensors").is_file()
    # Bad input: clear one-line error, exit 1, nothing written.
    r = run_cli("baseline", "uniform", "--task", tmp_path / "nope", "--safety", safety, "--lambda", "1",
                "--out", tmp_path / "bad1")
    assert r.code == 1 and "nope" in r.err and not (tmp_path / "bad1").exists()
    r = run_cli("baseline", "safe-lora", "--task", task, "--out", tmp_path / "bad2")
    assert r.code == 1 and "--safety" in r.err and not (tmp_path / "bad2").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes((task / "adapter_model.safetensors").read_bytes())
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    r = run_cli("baseline", "safe-lora", "--task", broken, "--safety", safety, "--out", tmp_path / "bad3")
    assert r.code == 1 and "adapter_config.json" in r.err and not (tmp_path / "bad3").exists()
