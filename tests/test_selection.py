"""Stage 2: data-aware layer selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safegene_runtime.adapters import load_adapter
from safegene_runtime.artifacts import content_id, read_manifest
from tests._train_tiny import benign_prompts, harmful_prompts, perturb_layers

HARMFUL = harmful_prompts()[:8]
BENIGN = benign_prompts()[:8]


pytestmark = pytest.mark.usefixtures("isolated_home", "one_thread")


@pytest.fixture(scope="module")
def degraded_top(tiny_model, tmp_path_factory) -> Path:
    """D differs from A only in layers 2 and 3 (of 4)."""
    return perturb_layers(tiny_model, tmp_path_factory.mktemp("deg") / "degraded", [2, 3])


def _write_jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_choose_layers_rules():
    from safegene_runtime.selection import choose_layers

    scores = {0: 0.5, 1: 3.0, 2: 3.0, 3: 1.0}
    assert choose_layers(scores, top_k=2) == [1, 2]
    assert choose_layers(scores, top_k=1) == [1]  # tie broken by lower index
    assert choose_layers(scores, threshold=1.0) == [1, 2, 3]
    assert choose_layers(scores) == [1, 2]  # default: top half
    with pytest.raises(ValueError):
        choose_layers(scores, top_k=1, threshold=1.0)


def test_perturbed_layers_score_highest(tiny_model, degraded_top):
    from safegene_runtime.selection import measure_layers

    m = measure_layers(tiny_model, degraded_top, HARMFUL, BENIGN, batch_size=4)
    # Layers before the first perturbed one compute exactly the same residual stream.
    assert m["c_harmful"][0] == 0.0 and m["c_harmful"][1] == 0.0 and m["c_benign"][1] == 0.0
    assert min(m["c_harmful"][2], m["c_harmful"][3]) > 1e-3
    top = sorted(m["scores"], key=lambda l: -m["scores"][l])[:2]
    assert sorted(top) == [2, 3]
    # Batching does not change the measurement (padding is masked out).
    m1 = measure_layers(tiny_model, degraded_top, HARMFUL, BENIGN, batch_size=3)
    for l in range(4):
        assert m1["c_harmful"][l] == pytest.approx(m["c_harmful"][l], rel=1e-4, abs=1e-7)


def test_scorers_are_pluggable(tiny_model, degraded_top):
    from safegene_runtime.selection import SCORERS, measure_layers

    m = measure_layers(tiny_model, degraded_top, HARMFUL, BENIGN, batch_size=8, method="harmful_contrast")
    assert m["scores"] == m["c_harmful"]
    ratio = SCORERS["contrast_ratio"](m["c_harmful"], m["c_benign"], 1e-6)
    assert ratio[3] == pytest.approx(m["c_harmful"][3] / (m["c_benign"][3] + 1e-6))
    with pytest.raises(ValueError, match="unknown selection method"):
        measure_layers(tiny_model, degraded_top, HARMFUL, BENIGN, method="nope")


def test_select_writes_new_adapter_and_leaves_input_alone(tiny_model, degraded_top, make_lora, tmp_path):
    from safegene_runtime.selection import select_safety_layers

    safety = make_lora("safety", rank=4, alpha=4, seed=5)
    before = content_id(safety)
    out = select_safety_layers(tiny_model, degraded_top, safety, HARMFUL, BENIGN, top_k=2, batch_size=4)
    assert content_id(safety) == before and not (safety / "manifest.json").exists()
    assert out.parent == safety.parent and out.name.startswith("safety-selected-")
    man = read_manifest(out)
    sel = man["selection"]
    assert sel["selected"] == [2, 3]
    assert set(sel["scores"]) == set(sel["c_harmful"]) == set(sel["c_benign"]) == {"0", "1", "2", "3"}
    assert sel["method"] == "contrast_ratio" and sel["prompts"]["harmful"]["count"] == len(HARMFUL)
    assert len(sel["prompts"]["benign"]["sha256"]) == 64
    assert [e["role"] for e in man["lineage"]] == ["safety", "aligned", "degraded"]
    assert man["id"] == content_id(out)
    # keep="all": the weights are the input's, bit for bit.
    assert (out / "adapter_model.safetensors").read_bytes() == (safety / "adapter_model.safetensors").read_bytes()
    # Same inputs → same artifact (content-addressed, reused).
    assert select_safety_layers(tiny_model, degraded_top, safety, HARMFUL, BENIGN, top_k=2, batch_size=4) == out
    # keep="selected": only the selected layers' modules, with the same deltas.
    out2 = select_safety_layers(tiny_model, degraded_top, safety, HARMFUL, BENIGN, top_k=2, keep="selected",
                                out=tmp_path / "only-selected")
    a, b = load_adapter(safety), load_adapter(out2)
    assert b.layers() == [2, 3]
    for m in b.weights:
        torch.testing.assert_close(b.delta(m), a.delta(m), rtol=1e-6, atol=1e-7)


def test_select_cli(tiny_model, degraded_top, make_lora, run_cli, tmp_path):
    safety = make_lora("safety", rank=4, alpha=4, seed=5)
    h = _write_jsonl(tmp_path / "harmful.jsonl", HARMFUL)
    b = _write_jsonl(tmp_path / "benign.jsonl", BENIGN)
    common = ["select", "--aligned", tiny_model, "--degraded", degraded_top, "--safety", safety]
    r = run_cli(*common, "--harmful", h, "--benign", b, "--top-k", "1", "--max-prompts", "4", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    sel = read_manifest(tmp_path / "o")["selection"]
    assert len(sel["selected"]) == 1 and sel["selected"][0] in (2, 3)
    assert sel["prompts"]["harmful"]["count"] == 4 and sel["prompts"]["harmful"]["file_sha256"]
    # Bad inputs: exit 1, one clear line naming the problem, no output folder.
    r = run_cli(*common, "--harmful", tmp_path / "missing.jsonl", "--benign", b, "--out", tmp_path / "x1")
    assert r.code == 1 and "missing.jsonl" in r.err and not (tmp_path / "x1").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    r = run_cli(*common, "--harmful", bad, "--benign", b, "--out", tmp_path / "x2")
    assert r.code == 1 and "bad.jsonl:2" in r.err and not (tmp_path / "x2").exists()
    r = run_cli("select", "--aligned", tmp_path / "nomodel", "--degraded", degraded_top, "--safety", safety,
                "--harmful", h, "--benign", b, "--out", tmp_path / "x3")
    assert r.code == 1 and "nomodel" in r.err and not (tmp_path / "x3").exists()
    r = run_cli(*common, "--harmful", h, "--benign", b, "--top-k", "9", "--out", tmp_path / "x4")
    assert r.code == 1 and "--top-k" in r.err and not (tmp_path / "x4").exists()


def _damped(safety: Path, out: Path, layers: set[int], factor: float) -> Path:
    """Copy of a safety adapter with the deltas of ``layers`` multiplied by ``factor``."""
    from safegene_runtime.adapters import layer_index, save_adapter

    ad = load_adapter(safety)
    mods = {m: (a, b * ad.scaling(m) * (factor if layer_index(m) in layers else 1.0))
            for m, (a, b) in ad.weights.items()}
    return save_adapter(out, mods, base_model=ad.config.base_model_name_or_path)


def test_refusal_gradient_scores_the_safety_adapters_own_effect(tmp_path_factory, tmp_path):
    """On a family trained to refuse: the safety direction raises D's refusal margin, each layer's score is linear
    in that layer's delta (a derivative at λ = 0), and the selection records the gradients it chose by."""
    from safegene_runtime.selection import GRADIENT, choose_layers, refusal_gradient, select_safety_layers
    from tests._train_tiny import shared_family

    fam = shared_family(tmp_path_factory)
    harm, ben = fam.harmful_train[::3][:8], fam.benign[:8]
    kw = dict(max_new_tokens=10, batch_size=4, progress=False)
    m = refusal_gradient(fam.aligned, fam.degraded, fam.safety, harm, ben, **kw)
    assert m["shots"]["harmful"] >= 4 and m["shots"]["benign"] >= 4  # A refuses / answers, D complies
    assert set(m["g_harmful"]) == set(m["g_benign"]) == set(m["scores"]) == set(load_adapter(fam.safety).layers())
    assert sum(m["g_harmful"].values()) > 0  # adding A − D to D makes A's refusal likelier than D's answer
    for l, s in m["scores"].items():
        assert s == pytest.approx(m["g_harmful"][l] + min(m["g_benign"][l], 0.0))
    # Damping layers 0 and 1 a hundredfold scales their gradients a hundredfold and leaves the others alone.
    damped = _damped(fam.safety, tmp_path / "damped", {0, 1}, 0.01)
    m2 = refusal_gradient(fam.aligned, fam.degraded, damped, harm, ben, **kw)
    for l in m["g_harmful"]:
        f = 0.01 if l in (0, 1) else 1.0
        assert m2["g_harmful"][l] == pytest.approx(f * m["g_harmful"][l], rel=1e-3, abs=1e-7)
        assert m2["g_benign"][l] == pytest.approx(f * m["g_benign"][l], rel=1e-3, abs=1e-7)
    out = select_safety_layers(fam.aligned, fam.degraded, damped, harm, ben, top_k=2, method=GRADIENT,
                               out=tmp_path / "selected", batch_size=4, progress=False)
    sel = read_manifest(out)["selection"]
    assert sel["method"] == GRADIENT and "g_harmful" in sel and "c_harmful" not in sel
    assert sel["selected"] == choose_layers({int(k): v for k, v in sel["scores"].items()}, top_k=2)
    assert sel["shots"] == m2["shots"]
    with pytest.raises(ValueError, match="needs the safety adapter"):
        from safegene_runtime.selection import measure_layers

        measure_layers(fam.aligned, fam.degraded, harm, ben, method=GRADIENT)
