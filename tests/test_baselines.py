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


# --- RESTA-style task arithmetic with DARE ----------------------------------------------------------------------


def test_resta_dare_drops_at_rate_p_rescales_and_is_uniform_at_p0(pair, tmp_path):
    from safegene_runtime.baselines import resta_dare, uniform_safety

    task, safety = pair
    t, s = load_adapter(task), load_adapter(safety)
    lam, p = 0.7, 0.4
    # p = 0 is the uniform baseline, bit for bit.
    u = load_adapter(uniform_safety(task, safety, lam, store=tmp_path / "u"))
    r0 = load_adapter(resta_dare(task, safety, lam, p=0.0, store=tmp_path / "r0"))
    for m in u.weights:
        assert torch.equal(u.weights[m][0], r0.weights[m][0]) and torch.equal(u.weights[m][1], r0.weights[m][1])
    out = resta_dare(task, safety, lam, p=p, seed=5, store=tmp_path / "r")
    o = load_adapter(out)
    kept = total = 0
    for m in o.weights:
        r_t = t.weights[m][0].shape[0]
        a_o, b_o = o.weights[m]
        # the task part is untouched ...
        assert torch.equal(a_o[:r_t], t.weights[m][0]) and torch.equal(b_o[:, :r_t], t.weights[m][1] * t.scaling(m))
        # ... and every safety factor entry is either dropped or the original scaled by exactly 1/(1-p)
        a_s, b_s = s.weights[m]
        a_part, b_part = a_o[r_t:], b_o[:, r_t:]
        ka, kb = a_part != 0, b_part != 0
        assert torch.equal(a_part[ka], a_s[ka] / (1 - p))
        assert torch.equal(b_part[kb], (b_s / (1 - p))[kb] * (lam * s.scaling(m)))
        kept += int(ka.sum() + kb.sum())
        total += a_s.numel() + b_s.numel()
    drop = 1 - kept / total
    sigma = (p * (1 - p) / total) ** 0.5
    assert abs(drop - p) < 5 * sigma, (drop, p, sigma)
    man = read_manifest(out)["baseline"]
    assert man["name"] == "resta_dare" and man["p"] == p and man["zero_entries"]["zero"] == total - kept
    # seeded: the same seed gives the same artifact, another seed other masks
    assert resta_dare(task, safety, lam, p=p, seed=5, store=tmp_path / "r") == out
    other = load_adapter(resta_dare(task, safety, lam, p=p, seed=6, store=tmp_path / "r"))
    m = t.modules()[0]
    assert not torch.equal(other.weights[m][0], o.weights[m][0])
    with pytest.raises(ValueError, match="p must be in"):
        resta_dare(task, safety, lam, p=1.0, store=tmp_path / "bad")


# --- SafeMERGE ---------------------------------------------------------------------------------------------------


def test_safemerge_merges_exactly_the_low_similarity_modules(pair, tiny_model, tmp_path):
    from safegene_runtime.adapters import AdapterError
    from safegene_runtime.baselines import safemerge

    task, safety = pair
    t, s = load_adapter(task), load_adapter(safety)
    sims = {m: _dense_reference(t, s, m)[0] for m in t.modules()}
    ordered = sorted(sims.values())
    tau = (ordered[len(sims) // 3 - 1] + ordered[len(sims) // 3]) / 2  # between two modules: no round-off tie
    w = 0.3
    out = safemerge(task, safety, threshold=tau, weight=w, store=tmp_path / "store")
    o, info = load_adapter(out), read_manifest(out)["baseline"]
    expected = {m for m, v in sims.items() if v < tau}
    assert 0 < len(expected) < len(sims)
    assert set(info["merged"]) == expected and info["n_merged"] == len(expected)
    for m in t.modules():
        assert info["modules"][m]["similarity"] == pytest.approx(sims[m], rel=1e-6, abs=1e-9)
        a_o, b_o = o.weights[m]
        if m in expected:
            assert a_o.shape[0] == t.weights[m][0].shape[0] + s.weights[m][0].shape[0]
            torch.testing.assert_close(o.delta(m, torch.float64),
                                       (1 - w) * t.delta(m, torch.float64) + w * s.delta(m, torch.float64),
                                       rtol=1e-5, atol=1e-7)
        else:  # the task update, bit-identical
            assert torch.equal(a_o, t.weights[m][0]) and torch.equal(b_o, t.weights[m][1] * t.scaling(m))
    # PEFT reads the mixed ranks (rank_pattern) as the written deltas.
    merged, base = _peft_merged_weights(tiny_model, out), _base_weights(tiny_model)
    for m in (sorted(expected)[0], sorted(set(sims) - expected)[0]):
        torch.testing.assert_close(merged[f"{m}.weight"], base[f"{m}.weight"] + o.delta(m), rtol=1e-5, atol=1e-6)
    # The reference code's PEFT 'linear' factor mix (with its cross terms) needs equal ranks.
    with pytest.raises(AdapterError, match="equal ranks"):
        safemerge(task, safety, threshold=tau, combination="peft_linear", store=tmp_path / "bad")


def test_safemerge_peft_linear_and_aligned_minus_original(make_lora, tiny_model, tmp_path):
    from safegene_runtime.baselines import safemerge
    from safegene_runtime.testing.tiny import make_perturbed_model

    task = make_lora("t8", rank=8, seed=3, magnitude=0.05)
    safety = make_lora("s8", rank=8, alpha=8, seed=4, magnitude=0.05)
    t, s = load_adapter(task), load_adapter(safety)
    w = 0.2
    out = safemerge(task, safety, top_fraction=0.5, weight=w, combination="peft_linear", store=tmp_path / "a")
    o, info = load_adapter(out), read_manifest(out)["baseline"]
    m = info["merged"][0]
    (a_t, b_t), (a_s, b_s) = t.weights[m], s.weights[m]
    f, g = ((1 - w) * t.scaling(m)) ** 0.5, (w * s.scaling(m)) ** 0.5
    torch.testing.assert_close(o.delta(m), (f * b_t + g * b_s) @ (f * a_t + g * a_s), rtol=1e-5, atol=1e-7)
    # V = W(aligned) - W(original), streamed from two checkpoints.
    original = make_perturbed_model(tiny_model, tmp_path / "original", seed=9, relative_std=0.05)
    out2 = safemerge(task, safety, aligned=tiny_model, original=original, threshold=0.5, store=tmp_path / "b")
    info2 = read_manifest(out2)["baseline"]
    assert info2["source"] == "aligned_minus_original"
    assert {e["role"] for e in read_manifest(out2)["lineage"]} == {"task", "safety", "aligned", "original"}
    a_w, o_w = _base_weights(tiny_model), _base_weights(original)
    for m in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.up_proj"):
        v = (a_w[f"{m}.weight"] - o_w[f"{m}.weight"]).double()
        dt = t.delta(m, torch.float64)
        pdt = (v @ v.T / v.norm()) @ dt
        cos = float((dt * pdt).sum() / (dt.norm() * pdt.norm()))
        assert info2["modules"][m]["similarity"] == pytest.approx(cos, rel=1e-6)
        assert info2["modules"][m]["merged"] == (cos < 0.5)


# --- Safe LoRA against PEFT's reference algorithm ----------------------------------------------------------------


def _peft_safelora_reference(base_w, aligned_w, task: Path, threshold: float):
    """PEFT's ``peft.utils.safelora`` algorithm, re-implemented from the paper and PEFT's documentation: V = W_base −
    W_aligned, C = V Vᵀ/‖V‖, per module cos(C B A, B A) rounded to 5 decimals, project B when cos <= threshold; raw
    LoRA factors, the config's scale untouched. Returns (module -> rounded cos, module -> full delta)."""
    from safetensors.torch import load_file

    from safegene_runtime.adapters import LoraConfig

    raw = load_file(str(task / "adapter_model.safetensors"))
    cfg = LoraConfig.from_dict(json.loads((task / "adapter_config.json").read_text()))
    cos, delta = {}, {}
    for key in sorted(k for k in raw if "lora_A" in k):
        m = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a, b = raw[key].float(), raw[key.replace("lora_A", "lora_B")].float()
        v = base_w[f"{m}.weight"].float() - aligned_w[f"{m}.weight"].float()
        c = v @ v.T / torch.norm(v)
        w = c @ b
        cval = torch.nn.functional.cosine_similarity((w @ a).reshape(1, -1), (b @ a).reshape(1, -1))
        cval = float(torch.round(cval * 10**5) / 10**5)
        cos[m] = cval
        delta[m] = ((w if cval <= threshold else b) @ a) * cfg.scaling(m)
    return cos, delta


def test_safe_lora_aligned_minus_original_matches_peft_reference(pair, tiny_model, tmp_path):
    from safegene_runtime.baselines import safe_lora
    from safegene_runtime.testing.tiny import make_perturbed_model

    task, _ = pair
    original = make_perturbed_model(tiny_model, tmp_path / "original", seed=7, relative_std=0.05)
    a_w, o_w = _base_weights(tiny_model), _base_weights(original)
    sims = sorted(_peft_safelora_reference(o_w, a_w, task, 0.0)[0].values())
    i = len(sims) // 2
    tau = (sims[i - 1] + sims[i]) / 2  # between two modules, so rounding and <= vs < cannot differ
    ref_cos, ref_delta = _peft_safelora_reference(o_w, a_w, task, tau)
    out = safe_lora(task, aligned=tiny_model, original=original, threshold=tau, store=tmp_path / "s")
    o, info = load_adapter(out), read_manifest(out)["baseline"]
    assert info["source"] == "aligned_minus_original"
    assert set(info["projected"]) == {m for m, c in ref_cos.items() if c <= tau}
    for m, c in ref_cos.items():
        assert info["modules"][m]["similarity"] == pytest.approx(c, abs=1e-5)
        torch.testing.assert_close(o.delta(m), ref_delta[m], rtol=1e-4, atol=1e-6)


def test_safe_lora_against_installed_peft_safelora(pair, tiny_model, tmp_path):
    import importlib.util

    import peft

    if importlib.util.find_spec("peft.utils.safelora") is None:
        pytest.skip(f"the installed peft {peft.__version__} has no peft.utils.safelora; "
                    "test_safe_lora_aligned_minus_original_matches_peft_reference checks its algorithm instead")
    import shutil

    from peft.utils.safelora import SafeLoraConfig, apply_safelora

    from safegene_runtime.baselines import safe_lora
    from safegene_runtime.testing.tiny import make_perturbed_model

    task, _ = pair
    original = make_perturbed_model(tiny_model, tmp_path / "original", seed=7, relative_std=0.05)
    copy = Path(shutil.copytree(task, tmp_path / "peft_task"))
    tau = 0.5
    theirs = apply_safelora(SafeLoraConfig(base_model_path=str(original), aligned_model_path=str(tiny_model),
                                           peft_model_path=str(copy), devices="cpu", select_layers_type="threshold",
                                           threshold=tau, save_weights=False))
    o = load_adapter(safe_lora(task, aligned=tiny_model, original=original, threshold=tau, store=tmp_path / "s"))
    t = load_adapter(task)
    for m in t.modules():
        a = theirs[f"base_model.model.{m}.lora_A.weight"]
        b = theirs[f"base_model.model.{m}.lora_B.weight"]
        torch.testing.assert_close(o.delta(m), (b @ a) * t.scaling(m), rtol=1e-4, atol=1e-6)


# --- the tuner -----------------------------------------------------------------------------------------------------


def _safety_coefficient(task: Path, safety: Path, built: Path) -> float:
    """The λ a built adapter effectively adds: <ΔW(built) − ΔW(task), ΔS> / ‖ΔS‖², over all modules (a real
    quantity of the weights)."""
    t, s, o = load_adapter(task), load_adapter(safety), load_adapter(built)
    num = den = 0.0
    for m in s.weights:
        ds = s.delta(m, torch.float64)
        diff = (o.delta(m, torch.float64) if m in o.weights else 0) - (t.delta(m, torch.float64) if m in t.weights else 0)
        num += float((diff * ds).sum())
        den += float((ds * ds).sum())
    return num / den


def fake_evaluator(adapter: Path | None) -> dict[str, float]:
    """Validation numbers as smooth functions of the effective safety coefficient c of the adapter: more safety,
    less harm, lower task score, more over-refusal. Paths come from $SG_FAKE_EVAL (the CLI test imports it)."""
    import math
    import os

    paths = json.loads(os.environ["SG_FAKE_EVAL"])
    if adapter is None:  # the aligned model without an adapter
        return {"harmful_rate": 0.05, "over_refusal_rate": 0.05, "task_score": 0.3}
    c = _safety_coefficient(Path(paths["task"]), Path(paths["safety"]), Path(adapter))
    return {"harmful_rate": 0.6 * math.exp(-c), "over_refusal_rate": min(1.0, 0.05 + 0.005 * c),
            "task_score": max(0.0, 0.7 - 0.004 * c * c)}


def _rule_by_hand(cands, plain, aligned, task_slack=0.01, refusal_slack=0.03):
    ok = [i for i, c in enumerate(cands) if c["metrics"]["task_score"] >= plain["task_score"] - task_slack - 1e-12
          and c["metrics"]["over_refusal_rate"] <= aligned["over_refusal_rate"] + refusal_slack + 1e-12]
    return min(ok, key=lambda i: (cands[i]["metrics"]["harmful_rate"], cands[i]["intervention"], i))


def test_tune_picks_by_the_rule_and_records_every_candidate(pair, tmp_path, monkeypatch):
    from safegene_runtime.baselines.tune import tune

    task, safety = pair
    monkeypatch.setenv("SG_FAKE_EVAL", json.dumps({"task": str(task), "safety": str(safety)}))
    grid = {"lam": [0.5, 1.0, 1.5, 2.0, 3.0]}
    out = tune("uniform", task, fake_evaluator, sets=["harmful-val", "edgy-benign-val"], safety=safety, grid=grid,
               store=tmp_path / "store", progress=False)
    tun = read_manifest(out)["tuning"]
    cands = tun["candidates"]
    assert [c["knobs"]["lam"] for c in cands] == grid["lam"]
    assert tun["reference"]["plain"] == fake_evaluator(task) and tun["validation_sets"] == ["harmful-val", "edgy-benign-val"]
    best = _rule_by_hand(cands, tun["reference"]["plain"], tun["reference"]["aligned"])
    assert tun["chosen"] == best and tun["feasible"] and "lowest validation harmful_rate" in tun["rule"]["text"]
    # the rule bit: the least harmful candidate overall breaks the task bound, so it is not the one chosen
    least_harm = min(range(len(cands)), key=lambda i: cands[i]["metrics"]["harmful_rate"])
    assert least_harm != best and not cands[least_harm]["qualifies"]
    # the published adapter is the chosen candidate: same numbers, same weights as building it directly
    assert fake_evaluator(out) == pytest.approx(cands[best]["metrics"])
    from safegene_runtime.baselines import uniform_safety

    direct = load_adapter(uniform_safety(task, safety, cands[best]["knobs"]["lam"], store=tmp_path / "d"))
    got = load_adapter(out)
    assert all(torch.equal(got.weights[m][1], direct.weights[m][1]) for m in direct.weights)
    assert read_manifest(out)["baseline"]["name"] == "uniform"
    assert {e["role"] for e in read_manifest(out)["lineage"]} >= {"task", "safety", "tuned_candidate"}
    # intervention grows with λ (one size for every method)
    iv = [c["intervention"] for c in cands]
    assert iv == sorted(iv) and iv[0] > 0


def test_rule_ties_and_infeasible():
    from safegene_runtime.baselines.tune import Rule

    plain = {"harmful_rate": 0.5, "over_refusal_rate": 0.0, "task_score": 0.8}
    aligned = {"harmful_rate": 0.0, "over_refusal_rate": 0.1, "task_score": 0.4}

    def row(h, o, t, iv):
        return {"metrics": {"harmful_rate": h, "over_refusal_rate": o, "task_score": t}, "intervention": iv}

    rows = [row(0.1, 0.1, 0.80, 0.9), row(0.1, 0.12, 0.795, 0.3), row(0.05, 0.2, 0.8, 0.1), row(0.1, 0.1, 0.7, 0.01)]
    # rows 0 and 1 qualify and tie on harm: the smaller intervention (row 1) wins; row 2 over-refuses, row 3 loses task
    assert Rule().choose(rows, plain, aligned) == (1, True)
    # a looser over-refusal slack lets row 2 (least harm) in
    assert Rule(over_refusal_slack=0.10).choose(rows, plain, aligned) == (2, True)
    # nothing qualifies: the smallest shortfall wins, flagged infeasible
    bad = [row(0.1, 0.2, 0.8, 0.1), row(0.2, 0.15, 0.8, 0.1), row(0.0, 0.5, 0.1, 0.1)]
    assert Rule().choose(bad, plain, aligned) == (1, False)


def test_tune_refuses_test_sets_before_building(pair, tmp_path):
    from safegene_runtime.baselines.tune import tune
    from safegene_runtime.datasets import NAMED_SETS, TEST_SETS, DatasetError, is_test_set

    assert TEST_SETS <= set(NAMED_SETS)  # one list, of real set names
    task, safety = pair
    calls = []

    def evaluator(path):
        calls.append(path)
        return {"harmful_rate": 0.0, "over_refusal_rate": 0.0, "task_score": 1.0}

    store = tmp_path / "store"
    for sets in (["harmbench-val", "harmbench-test-standard"], ["rho-overrefusal"], ["gsm8k-100"],
                 [str(tmp_path / "sentiment-heldout.jsonl")], ["data/task_test.jsonl"]):
        with pytest.raises(DatasetError, match="test set"):
            tune("uniform", task, evaluator, sets=sets, safety=safety, store=store, progress=False)
    evaluator.sets = ["harmbench-test"]  # what the evaluator says it reads counts too
    with pytest.raises(DatasetError, match="harmbench-test"):
        tune("uniform", task, evaluator, sets=["harmful-val"], safety=safety, store=store, progress=False)
    evaluator.sets = []
    for sets in (["harmful-align-train"], ["advbench"], ["harmful-val", "rho-benign"]):  # trained on, or a raw pool
        with pytest.raises(DatasetError, match="VALIDATION"):
            tune("uniform", task, evaluator, sets=sets, safety=safety, store=store, progress=False)
    assert calls == [] and not store.exists()
    assert not is_test_set("harmbench-val") and not is_test_set("contest.jsonl") and not is_test_set("advbench")


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_baseline_cli_new_methods_and_tune(pair, run_cli, tmp_path, monkeypatch):
    task, safety = pair
    for sub in ("resta-dare", "safemerge", "safe-lora", "tune"):
        r = run_cli("baseline", sub, "--help")
        assert r.code == 0 and "--task" in r.out
    assert "SafeMERGE" in run_cli("baseline", "--help").out
    r = run_cli("baseline", "resta-dare", "--task", task, "--safety", safety, "--lambda", "0.5", "--p", "0.3",
                "--out", tmp_path / "r")
    assert r.code == 0, r.err
    assert read_manifest(tmp_path / "r")["baseline"]["p"] == 0.3 and "factor entries are zero" in r.out
    r = run_cli("baseline", "safemerge", "--task", task, "--safety", safety, "--top-fraction", "0.25",
                "--weight", "0.4", "--out", tmp_path / "m")
    assert r.code == 0, r.err
    b = read_manifest(tmp_path / "m")["baseline"]
    assert b["weight"] == 0.4 and f"merged {b['n_merged']} of {b['n_modules']}" in r.out
    monkeypatch.setenv("SG_FAKE_EVAL", json.dumps({"task": str(task), "safety": str(safety)}))
    r = run_cli("baseline", "tune", "resta_dare", "--task", task, "--safety", safety, "--grid", "lam=1,2",
                "--grid", "p=0,0.5", "--evaluator", "tests.test_baselines:fake_evaluator",
                "--sets", "harmful-val,edgy-benign-val", "--no-progress", "--out", tmp_path / "t")
    assert r.code == 0, r.err
    tun = read_manifest(tmp_path / "t")["tuning"]
    assert len(tun["candidates"]) == 4 and f"chose {json.dumps(tun['knobs'])}" in r.out
    assert {tuple(c["knobs"].items()) for c in tun["candidates"]} == {
        (("lam", x), ("p", y)) for x in (1.0, 2.0) for y in (0.0, 0.5)}
    r = run_cli("baseline", "tune", "uniform", "--task", task, "--safety", safety, "--evaluator",
                "tests.test_baselines:fake_evaluator", "--sets", "harmbench-test", "--out", tmp_path / "bad")
    assert r.code == 1 and "test set" in r.err and not (tmp_path / "bad").exists()


@pytest.mark.engine
def test_tune_through_the_served_eval_harness(live_server, tmp_path):
    """The tuner on the real server: each candidate registered through the admin API, scored by the eval harness
    on validation sets, retired; the recorded numbers are the eval folders' results."""
    from safegene_runtime.baselines.served import ServedEvaluator
    from safegene_runtime.baselines.tune import tune

    task_file = tmp_path / "val-task.jsonl"
    task_file.write_text("".join(json.dumps({"prompt": f"Repeat the word {w}.", "answer": w}) + "\n"
                                 for w in ("apple", "river")))
    ev = ServedEvaluator(live_server.base_url, base_model=live_server.base_model, harmful="harmful-val",
                         benign="edgy-benign-val", task=str(task_file), out=tmp_path / "eval", limit=2,
                         api_key=live_server.api_key, admin_key=live_server.admin_key, max_tokens=8, concurrency=4)
    store = live_server.adapter_root / "tune-test"
    out = tune("uniform", live_server.family["alpha"], ev, sets=[], safety=live_server.family["safety"],
               grid={"lam": [0.5, 1.0]}, store=store, progress=False)
    tun = read_manifest(out)["tuning"]
    assert tun["validation_sets"] == ["harmful-val", "edgy-benign-val", str(task_file)]
    for c in tun["candidates"]:
        res = json.loads((tmp_path / "eval" / f"tune-{c['candidate_id'][:12]}" / "results.json").read_text())
        (name, r), = res["models"].items()
        assert res["sets"]["harmful"]["name"] == "harmful-val" and res["sets"]["harmful"]["n"] == 2
        assert c["metrics"] == {"harmful_rate": r["harmful_response_rate"]["rate"],
                                "over_refusal_rate": r["over_refusal_rate"]["rate"],
                                "task_score": r["task_accuracy"]["rate"]}
    base = json.loads((tmp_path / "eval" / live_server.base_model / "results.json").read_text())
    assert tun["reference"]["aligned"]["harmful_rate"] == base["models"][live_server.base_model][
        "harmful_response_rate"]["rate"]
    served = {m.id for m in live_server.client().models.list().data}
    assert not any(m.startswith("tune-") for m in served)  # every candidate was retired
