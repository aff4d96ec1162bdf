"""Stacking: exact rank concatenation, PEFT parity, rank patterns, rank budget, content addressing, refusals."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from safegene_runtime.adapters import (
    AdapterError, build_config, layer_index, load_adapter, lora_key, save_adapter,
)
from safegene_runtime.artifacts import ArtifactError, read_manifest
from safegene_runtime.coefficients import Coefficients, save_coefficients
from safegene_runtime.extract import extract_safety_adapter
from safegene_runtime.stack import ALLOWED_MAX_LORA_RANKS, choose_max_lora_rank, stack_adapters
from safegene_runtime.testing.tiny import linear_shapes, make_perturbed_model, make_random_lora, make_tiny_model

LAMBDAS = Coefficients(layers={0: 0.0, 1: 0.5, 2: 1.5}, default=1.0)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def safety(tiny_model, tmp_path_factory):
    """A real extracted safety adapter with per-module ranks (energy criterion → rank_pattern)."""
    root = tmp_path_factory.mktemp("safety")
    deg = make_perturbed_model(tiny_model, root / "degraded", seed=2, relative_std=0.05)
    return extract_safety_adapter(tiny_model, deg, energy=0.2, out=root / "safety", progress=False)


def _pattern_task(folder, base, *, rslora=False):
    """A task adapter with per-module ranks via rank_pattern and alpha_pattern (scales ≠ 1, PEFT semantics)."""
    shapes = linear_shapes(base)
    g = torch.Generator().manual_seed(11)
    weights = {}
    for layer in range(4):
        for kind, r in (("q_proj", 2), ("v_proj", 6), ("down_proj", 4)):
            out_f, in_f = shapes[kind]
            weights[f"model.layers.{layer}.{'mlp' if kind == 'down_proj' else 'self_attn'}.{kind}"] = (
                torch.randn(r, in_f, generator=g) / in_f**0.5, torch.randn(out_f, r, generator=g) * 0.01)
    cfg = build_config(weights, base_model=str(base), scale_one=False, lora_alpha=12.0)
    cfg["alpha_pattern"] = {"q_proj": 3.0}
    cfg["use_rslora"] = rslora
    return save_adapter(folder, weights, base_model=str(base), config=cfg)


def _check_exact(stacked, task, safety, coeffs):
    st, t, s = load_adapter(stacked), load_adapter(task), load_adapter(safety)
    assert st.config.lora_alpha == st.config.r and not st.config.use_rslora
    for m in st.modules():
        assert st.scaling(m) == 1.0, m
        ref = torch.zeros_like(st.delta(m))
        if m in t.weights:
            ref += t.delta(m)
        if m in s.weights:
            ref += coeffs.of(layer_index(m)) * s.delta(m)
        assert (st.delta(m) - ref).abs().max() <= 1e-6, m
    expected = set(t.weights) | {m for m in s.weights if coeffs.of(layer_index(m)) != 0}
    assert set(st.weights) == expected
    return st


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_stacking_is_exact_and_peft_agrees(tiny_model, make_lora, safety, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    task = make_lora("task", rank=4, alpha=16, seed=3)  # scale 4
    out = stack_adapters(task, safety, LAMBDAS, store=tmp_path / "store", name="sent+safegene")
    assert out.parent == tmp_path / "store" and out.name.startswith("sent+safegene-")
    st = _check_exact(out, task, safety, LAMBDAS)
    t, s = load_adapter(task), load_adapter(safety)
    m0, m1 = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"
    assert st.weights[m0][0].shape[0] == 4  # λ=0 in layer 0: safety part dropped
    assert st.weights[m1][0].shape[0] == 4 + s.weights[m1][0].shape[0]
    assert st.config.rank_pattern  # ranks differ per module

    man = read_manifest(out)
    assert man["kind"] == "stacked_adapter" and man["method"] == {"name": "exact_concat"}
    assert [e["role"] for e in man["lineage"]] == ["task", "safety", "coefficients"]
    assert man["lineage"][2]["digest"] == LAMBDAS.digest() == man["coefficients"]["digest"]
    assert man["modules"][m1]["lambda"] == 0.5 and man["modules"][m1]["task_scale"] == 4.0
    assert man["recommended_max_lora_rank"] == choose_max_lora_rank(man["max_rank"])

    # PEFT reads the folder as exactly base + ΔT + λ·ΔS
    x = torch.tensor([[1, 5, 9, 30, 77, 120, 3]])
    manual = AutoModelForCausalLM.from_pretrained(tiny_model)
    sd = manual.state_dict()
    for m in t.modules():
        sd[f"{m}.weight"] += t.delta(m)
    for m in s.modules():
        sd[f"{m}.weight"] += LAMBDAS.of(layer_index(m)) * s.delta(m)
    manual.load_state_dict(sd)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out).merge_and_unload()
    ref = _logits(manual, x)
    assert (ref - _logits(AutoModelForCausalLM.from_pretrained(tiny_model), x)).abs().max() > 1e-2
    assert torch.allclose(_logits(peft, x), ref, atol=1e-5)
    assert torch.allclose(_logits(merged, x), ref, atol=1e-5)

    # content-addressed: same inputs → same folder; another λ → another folder
    assert stack_adapters(task, safety, LAMBDAS, store=tmp_path / "store", name="sent+safegene") == out
    other = stack_adapters(task, safety, Coefficients.uniform(1.0), store=tmp_path / "store", name="sent+safegene")
    assert other != out and other.parent == out.parent


@pytest.mark.parametrize("rslora", [False, True])
def test_task_rank_and_alpha_patterns_are_honoured(tiny_model, safety, tmp_path, rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    task = _pattern_task(tmp_path / "task", tiny_model, rslora=rslora)
    t = load_adapter(task)
    q = "model.layers.0.self_attn.q_proj"
    assert t.scaling(q) == (3.0 / math.sqrt(2) if rslora else 1.5)  # alpha_pattern / rank_pattern
    out = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "stacked")
    _check_exact(out, task, safety, LAMBDAS)
    if rslora:
        return  # the exactness check above covers the rsLoRA scale; PEFT parity is checked once below
    x = torch.tensor([[4, 8, 15, 16, 23, 42]])
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), task)
    stacked_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    # λ=0 on layer 0 and only a task adapter elsewhere... compare on a task+λ=0 stack: PEFT(task) == PEFT(stack)
    zero = stack_adapters(task, safety, Coefficients.uniform(0.0), out=tmp_path / "zero")
    assert set(load_adapter(zero).weights) == set(t.weights)
    zero_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), zero)
    assert torch.allclose(_logits(zero_model, x), _logits(ref_model, x), atol=1e-5)
    assert (_logits(stacked_model, x) - _logits(ref_model, x)).abs().max() > 1e-3


def test_module_sets_may_differ(tiny_model, make_lora, safety, tmp_path):
    task = make_lora("qv", rank=3, modules=("q_proj", "v_proj"), layers=[0, 3], seed=5)
    out = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "s")
    st = _check_exact(out, task, safety, LAMBDAS)
    s = load_adapter(safety)
    gate = "model.layers.2.mlp.gate_proj"  # safety only, λ=1.5
    assert torch.equal(st.weights[gate][0], s.weights[gate][0])
    assert not any(layer_index(m) == 0 and "mlp" in m for m in st.weights)  # safety-only and λ=0 → gone


def test_rank_budget_refactorises_optimally(tiny_model, make_lora, safety, tmp_path):
    task = make_lora("t8", rank=8, seed=9)
    exact = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "exact")
    exact_ad = load_adapter(exact)
    budget = 8
    out = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "budget", rank_budget=budget, max_lora_rank=8)
    ad, man = load_adapter(out), read_manifest(out)
    assert ad.max_rank() <= budget and man["method"]["name"] == "rank_budget_svd"
    errs = []
    for m in exact_ad.modules():
        full = exact_ad.delta(m).double()
        got = ad.delta(m).double()
        rel = float(torch.linalg.norm(full - got) / torch.linalg.norm(full))
        info = man["modules"][m]
        if exact_ad.weights[m][0].shape[0] > budget:
            s = torch.linalg.svdvals(full)
            best = float(torch.sqrt((s[budget:] ** 2).sum() / (s**2).sum()))
            assert info["exact_rank"] > budget and info["rank"] == budget
            assert info["relative_error"] == pytest.approx(rel, rel=1e-3, abs=1e-6)
            assert rel == pytest.approx(best, rel=1e-3, abs=1e-6)  # Eckart–Young optimum
            errs.append(rel)
        else:
            assert "relative_error" not in info and rel < 1e-6
    assert errs and man["method"]["max_relative_error"] == pytest.approx(max(errs), rel=1e-3)
    # a budget that nothing exceeds changes nothing (same artifact id as exact)
    roomy = stack_adapters(task, safety, LAMBDAS, out=tmp_path / "roomy", rank_budget=512)
    assert read_manifest(roomy)["id"] == read_manifest(exact)["id"]


def test_choose_max_lora_rank():
    assert [choose_max_lora_rank(r) for r in (0, 1, 2, 8, 9, 24, 300, 512)] == [1, 1, 8, 8, 16, 32, 320, 512]
    assert ALLOWED_MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    with pytest.raises(AdapterError, match="exceeds vLLM's largest"):
        choose_max_lora_rank(513)


def _assert_clean(parent, name=None):
    if parent.exists():
        names = [p.name for p in parent.iterdir()]
        assert not [n for n in names if n.startswith(".tmp-")], names
        if name:
            assert name not in names


def test_refusals(tiny_model, make_lora, safety, tmp_path, run_cli):
    task = make_lora("task", rank=4, seed=1)
    dest = tmp_path / "out"
    dest.mkdir()

    def refuse(exc, pattern, *args, **kw):
        with pytest.raises(exc, match=pattern):
            stack_adapters(*args, out=dest / "x", **kw)
        _assert_clean(dest, "x")

    # a safety adapter extracted from another base model
    other = make_tiny_model(tmp_path / "other", seed=5)
    other_safety = extract_safety_adapter(other, make_perturbed_model(other, tmp_path / "other_deg"), rank=2,
                                          modules="q_proj", out=tmp_path / "other_safety", progress=False)
    refuse(AdapterError, "different base models", task, other_safety, LAMBDAS)

    # shapes differ (bases unknown: hub-style names), caught on the shared modules
    wide = make_tiny_model(tmp_path / "wide", intermediate_size=384)
    wide_lora = make_random_lora(tmp_path / "wide_lora", wide, rank=2, modules=("down_proj",))
    _rewrite_config(wide_lora, base_model_name_or_path="org/wide")
    hub_task = make_lora("hub_task", rank=2, modules=("down_proj",))
    _rewrite_config(hub_task, base_model_name_or_path="org/tiny")
    refuse(AdapterError, r"module model\.layers\.0\.mlp\.down_proj: task delta is \(128, 256\) but safety delta is "
           r"\(128, 384\)", hub_task, wide_lora, LAMBDAS)
    # ... and against the base itself when the task's base is a local folder
    q_task = make_lora("q_task", rank=2, modules=("q_proj",))
    refuse(AdapterError, r"safety adapter .* module model\.layers\.0\.mlp\.down_proj has delta shape \(128, 384\)",
           q_task, wide_lora, LAMBDAS)

    # module naming that cannot be stacked onto one model
    odd = tmp_path / "odd"
    ad = load_adapter(safety)
    save_adapter(odd, {m.replace("model.layers", "transformer.h.layers"): ab for m, ab in ad.weights.items()},
                 base_model="org/tiny")
    refuse(AdapterError, "name their modules differently", hub_task, odd, LAMBDAS)

    # NaN/Inf in an input, or in λ
    nan = tmp_path / "nan"
    nan.mkdir()
    (nan / "adapter_config.json").write_text((task / "adapter_config.json").read_text())
    t = load_adapter(task)
    tensors = {lora_key(m, w): x.clone() for m, (a, b) in t.weights.items() for w, x in (("A", a), ("B", b))}
    tensors[lora_key("model.layers.1.self_attn.k_proj", "B")][0, 0] = float("nan")
    save_file(tensors, str(nan / "adapter_model.safetensors"))
    refuse(AdapterError, "k_proj contains NaN or Inf", nan, safety, LAMBDAS)
    refuse(AdapterError, "layer 2 is nan", task, safety, Coefficients(layers={2: float("nan")}, default=1.0))
    refuse(AdapterError, "default is inf", task, safety, Coefficients(layers={}, default=float("inf")))
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"layers": {"1": NaN}}')
    refuse(ArtifactError, "must be a non-negative index and a finite", task, safety, bad_file)

    # over the serving rank
    refuse(AdapterError, "exceeds max_lora_rank 8: serve with --max-lora-rank 16 or stack with --rank-budget 8",
           task, safety, LAMBDAS, max_lora_rank=8)
    refuse(ValueError, "not one of vLLM's values", task, safety, LAMBDAS, max_lora_rank=12)

    # missing files
    refuse(AdapterError, "does not exist", tmp_path / "missing", safety, LAMBDAS)
    half = tmp_path / "half"
    half.mkdir()
    (half / "adapter_config.json").write_text((task / "adapter_config.json").read_text())
    refuse(AdapterError, "missing adapter_model.safetensors", half, safety, LAMBDAS)
    refuse(ArtifactError, "coefficients file .* not found", task, safety, tmp_path / "nope.json")

    # an existing different artifact is never overwritten
    first = stack_adapters(task, safety, LAMBDAS, out=dest / "taken")
    with pytest.raises(ArtifactError, match="already holds a different artifact"):
        stack_adapters(task, safety, Coefficients.uniform(2.0), out=first)
    _assert_clean(dest)

    # the CLI reports refusals as one line and exit code 1
    coeffs = save_coefficients(tmp_path / "c.json", LAMBDAS)
    res = run_cli("stack", "--task", task, "--safety", other_safety, "--coefficients", coeffs, "--out", dest / "cli")
    assert res.code == 1 and "safegene stack: error:" in res.err and "different base models" in res.err
    _assert_clean(dest, "cli")


def test_cli_stack(make_lora, safety, tmp_path, run_cli):
    task = make_lora("task", rank=4, seed=1)
    coeffs = save_coefficients(tmp_path / "c.json", LAMBDAS)
    res = run_cli("stack", "--task", task, "--safety", safety, "--coefficients", coeffs, "--store",
                  tmp_path / "store", "--name", "demo", "--max-lora-rank", "32")
    assert res.code == 0, res.err
    assert "stacked adapter:" in res.out and "method exact_concat" in res.out
    (folder,) = (tmp_path / "store").iterdir()
    assert folder.name.startswith("demo-") and str(folder) in res.out
    _check_exact(folder, task, safety, LAMBDAS)
    res = run_cli("stack", "--task", task, "--safety", safety, "--coefficients", coeffs, "--out", tmp_path / "b",
                  "--rank-budget", "4")
    assert res.code == 0 and "max relative error" in res.out


def test_smollm2_sized_stack(tmp_path):
    """30 layers × 7 modules, hidden 576 / intermediate 1536, task r16 + safety r16. Its < 2 s target is measured by
    ``bench/pipeline.py`` (docs/benchmarks.md), not asserted here: a wall-clock bound fails on a busy CI machine."""
    shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
              "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
    g = torch.Generator().manual_seed(0)

    def mk(folder, r):
        w = {f"model.layers.{i}.{'mlp' if k in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{k}":
             (torch.randn(r, i_f, generator=g), torch.randn(o_f, r, generator=g) * 0.01)
             for i in range(30) for k, (o_f, i_f) in shapes.items()}
        cfg = build_config(w, base_model="HuggingFaceTB/SmolLM2-135M-Instruct", scale_one=False, lora_alpha=32)
        return save_adapter(folder, w, base_model=None, config=cfg, dtype=torch.bfloat16)

    task, safety = mk(tmp_path / "t", 16), mk(tmp_path / "s", 16)
    out = stack_adapters(task, safety, Coefficients.uniform(0.7), out=tmp_path / "st")
    assert load_adapter(out).max_rank() == 32 and read_manifest(out)["dtype"] == "bfloat16"


def _rewrite_config(folder, **kw):
    p = folder / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg.update(kw)
    p.write_text(json.dumps(cfg))
