"""Stage 3: few-shot per-layer calibration on a tiny model that was really trained to refuse (tests/_train_tiny.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from safegene_runtime.artifacts import ArtifactWriter
from safegene_runtime.calibration.config import CalibrationConfig
from safegene_runtime.coefficients import load_coefficients
from tests._train_tiny import calibration_shots, generate, refusal_rate, shared_family

#: the tests of one knob each measure it against the procedure before SafeGene v2 (CalibrationConfig.v1: selected
#: layers, no on-policy term, no benign contrast, given benign shots), so that the knob under test is the only change;
#: the first behavioural test runs the default procedure itself
FAST = dict(config=CalibrationConfig.v1(), max_new_tokens=10, progress=False, report_losses=True)


pytestmark = pytest.mark.usefixtures("isolated_home", "one_thread")


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return shared_family(tmp_path_factory)


@pytest.fixture(scope="module")
def shots(fam):
    return calibration_shots(fam)


def test_family_sanity(fam):
    """The premise of the behavioural test: A refuses held-out harmful prompts, A+T does not."""
    assert refusal_rate(generate(fam.aligned, fam.harmful_heldout)) >= 0.8
    assert refusal_rate(generate(fam.aligned, fam.harmful_heldout, task=fam.task)) <= 0.2


def test_calibration_restores_refusal_on_held_out_prompts(fam, shots, tmp_path):
    from safegene_runtime.calibration import calibrate

    out = tmp_path / "coefficients.json"
    c = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                  init=0.0, steps=20, lr=0.1, seed=0, out=out, max_new_tokens=10, progress=False,
                  report_losses=True)  # the default procedure, its losses reported
    loss = c.meta["loss"]
    assert loss["after"]["total"] < 0.5 * loss["before"]["total"]
    assert loss["after"]["refusal_margin"] < loss["at_zero"]["refusal_margin"]
    assert all(0.0 < v <= 4.0 for v in c.layers.values())
    at_zero = refusal_rate(generate(fam.aligned, fam.harmful_heldout, task=fam.task, safety=fam.safety, lambdas=0.0))
    calibrated = refusal_rate(generate(fam.aligned, fam.harmful_heldout, task=fam.task, safety=fam.safety,
                                       lambdas=c.layers))
    assert calibrated >= at_zero + 0.5, (at_zero, calibrated, c.layers)
    # Benign prompts are still answered, and the task still works.
    assert refusal_rate(generate(fam.aligned, fam.benign[:12], task=fam.task, safety=fam.safety,
                                 lambdas=c.layers)) <= 0.1
    # The file: schema, λ on every layer, provenance.
    saved = load_coefficients(out)
    assert saved.layers == c.layers and saved.default == 0.0
    raw = json.loads(out.read_text())
    assert raw["schema"] == "safegene.coefficients/v1"
    assert raw["method"]["seed"] == 0 and raw["method"]["steps"] == 20 and raw["method"]["lr"] == 0.1
    assert raw["shots"]["harmful"]["count"] == 8 and len(raw["shots"]["task"]["sha256"]) == 64
    assert {raw["base"]["role"], raw["task"]["role"], raw["safety"]["role"]} == {"base", "task", "safety"}
    # the default procedure's terms (SafeGene v2: the on-policy refusal margin and the benign contrast are on)
    assert set(raw["loss"]["before"]) == {"refusal_margin", "refusal_onpolicy", "task_kl", "benign_kl",
                                          "benign_margin", "penalty", "total"}
    assert raw["shots"]["benign"]["source"] == "given+edgy" and raw["shots"]["benign"]["edgy"]["count"] == 16
    assert raw["method"]["refusal_loss"] == "margin" and raw["method"]["margin_tokens"] == 4
    # the procedure as a CalibrationConfig (the keyword options went through it) and its digest, the cache key
    from safegene_runtime.calibration import CalibrationConfig

    config = CalibrationConfig(init=0.0, steps=20, lr=0.1, seed=0, max_new_tokens=10)
    assert raw["config"] == config.to_dict() and raw["config_digest"] == config.digest()
    # The margin term trains on the shots the task model complied with (T erodes refusal: most of them).
    assert 4 <= raw["shots"]["harmful"]["task_model_complied"] <= 8


def test_calibration_chooses_small_lambda_when_no_repair_is_needed(fam, shots, tmp_path):
    """A task adapter that did not erode safety: the benign/task terms pull λ from 1 towards 0."""
    from safegene_runtime.calibration import calibrate
    from safegene_runtime.testing.tiny import make_random_lora

    harmless = make_random_lora(tmp_path / "harmless", fam.aligned, rank=4, magnitude=0.001, seed=9)
    c = calibrate(fam.aligned, harmless, fam.safety, shots["harmful"], shots["benign"], shots["benign"],
                  init=1.0, steps=20, lr=0.1, **FAST)
    assert max(c.layers.values()) < 0.3, c.layers
    assert c.meta["loss"]["after"]["total"] < c.meta["loss"]["before"]["total"]
    # It still refuses every harmful shot, so the margin term has nothing to train on.
    assert c.meta["shots"]["harmful"]["task_model_complied"] == 0 and "refusal_margin" not in c.meta["loss"]["after"]


def test_cross_entropy_refusal_term_still_restores_refusal(fam, shots):
    """The first formulation (refusal_loss="ce") stays available; a bad name is refused up front."""
    from safegene_runtime.calibration import calibrate

    c = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                  init=0.0, steps=20, lr=0.1, refusal_loss="ce", **FAST)
    assert c.meta["loss"]["after"]["refusal_ce"] < c.meta["loss"]["at_zero"]["refusal_ce"]
    assert c.meta["method"]["refusal_loss"] == "ce" and "task_model_complied" not in c.meta["shots"]["harmful"]
    with pytest.raises(ValueError, match="refusal_loss must be one of"):
        calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], refusal_loss="kl", **FAST)


def test_margin_target_pushes_further_and_benign_window_is_recorded(fam, shots):
    """τ > 0 keeps the margin term from saturating at a tie, so calibration puts more safety in; the benign KL
    window (``benign_tokens``) is recorded with the objective."""
    from safegene_runtime.calibration import calibrate

    kw = dict(init=0.0, steps=20, lr=0.1, seed=0, **FAST)
    plain = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"], **kw)
    pushed = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                       margin_target=2.0, benign_tokens=2, **kw)
    assert sum(pushed.layers.values()) > sum(plain.layers.values()) + 0.1, (plain.layers, pushed.layers)
    m = pushed.meta["method"]
    assert m["margin_target"] == 2.0 and m["benign_tokens"] == 2
    assert plain.meta["method"]["margin_target"] == 0.0 and plain.meta["method"]["benign_tokens"] is None
    for bad, needle in ((dict(margin_target=float("nan")), "margin_target must be a finite number"),
                        (dict(benign_tokens=0), "benign_tokens must be positive")):
        with pytest.raises(ValueError, match=needle):
            calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], **FAST, **bad)


def test_benign_contrast_holds_safety_back_where_benign_answers_would_turn(fam, shots):
    """The benign contrast term is a barrier against over-refusal: pushed hard towards refusing (τ = 3), calibration
    with it puts less safety in (here 7.1 against 7.4 summed over the layers) and refuses no more benign prompts; the
    term, its weight and the count of benign shots A answers are recorded. (The tiny family barely over-refuses at
    any λ, so the SmolLM2 study is where the term's effect shows: docs/study-log.md.)"""
    from safegene_runtime.calibration import calibrate

    kw = dict(init=0.0, steps=20, lr=0.1, seed=0, margin_target=3.0, **FAST)
    pushed = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"], **kw)
    held = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                     benign_contrast=4.0, **kw)
    assert "benign_margin" not in pushed.meta["loss"]["after"] and pushed.meta["method"]["benign_contrast"] == 0.0
    assert held.meta["method"]["benign_contrast"] == 4.0 and held.meta["shots"]["benign"]["base_answered"] == 8
    assert sum(held.layers.values()) < sum(pushed.layers.values()) - 0.1, (pushed.layers, held.layers)
    benign = fam.benign[-12:]
    over = {name: refusal_rate(generate(fam.aligned, benign, task=fam.task, safety=fam.safety, lambdas=c.layers))
            for name, c in (("pushed", pushed), ("held", held))}
    assert over["held"] <= over["pushed"], over
    with pytest.raises(ValueError, match="benign_contrast"):
        calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], benign_contrast=-1.0, **FAST)


def test_shared_adam_keeps_the_gradients_relative_sizes_across_layers():
    """SharedAdam: the first step is −lr·g/rms(g) (relative sizes kept, scale-free like Adam); with one coordinate
    it is exactly torch's Adam."""
    import torch

    from safegene_runtime.calibration import SharedAdam

    g = torch.tensor([-4.0, -1.0, 0.0, 2.0])
    for scale in (1.0, 100.0):
        p = torch.zeros(4, requires_grad=True)
        opt = SharedAdam(p, lr=0.1)
        p.grad = g * scale
        opt.step()
        rms = float((g**2).mean().sqrt())
        assert torch.allclose(p.detach(), -0.1 * g / rms, atol=1e-6), (scale, p)
        opt.zero_grad()
        assert p.grad is None
    # Per-coordinate Adam moves every coordinate with a gradient by lr at the first step, whatever its size.
    q = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([q], lr=0.1)
    q.grad = g.clone()
    adam.step()
    assert torch.allclose(q.detach().abs(), torch.tensor([0.1, 0.1, 0.0, 0.1]), atol=1e-6)
    # One coordinate: the shared second moment is that coordinate's own, so the two agree step for step.
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    ref, shared = torch.optim.Adam([a], lr=0.05), SharedAdam(b, lr=0.05)
    for grad in (3.0, -1.0, 0.5, 2.0, -0.2):
        a.grad, b.grad = torch.tensor([grad]), torch.tensor([grad])
        ref.step()
        shared.step()
        assert torch.allclose(a.detach(), b.detach(), atol=1e-7)


def test_shared_step_moves_layers_in_proportion_to_their_gradient(fam, shots):
    """From λ = 0, one step of plain Adam moves every layer the loss pulls on by lr; one step of adam-shared moves
    them by different amounts (the gradient's relative sizes), the largest by more than lr. Recorded in the meta;
    a bad name is refused."""
    from safegene_runtime.calibration import calibrate

    kw = dict(init=0.0, steps=1, lr=0.1, seed=0, batch_size=8, **FAST)
    plain = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"], **kw)
    shared = calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                       optimizer="adam-shared", **kw)
    moved = [v for v in plain.layers.values() if v > 0]
    assert moved and all(abs(v - 0.1) < 1e-4 for v in moved), plain.layers
    s = [v for v in shared.layers.values() if v > 0]
    assert s and max(s) > 0.1 + 1e-3 and max(s) - min(s) > 1e-2, shared.layers
    assert plain.meta["method"]["optimizer"] == "adam" and shared.meta["method"]["optimizer"] == "adam-shared"
    with pytest.raises(ValueError, match="optimizer must be one of"):
        calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], optimizer="sgd", **FAST)


def test_several_starts_keep_the_lower_loss_and_equal_that_single_start(fam, shots):
    """init=[1, 0]: the same λ as the one-start calibration with the lower loss over all shots (same teachers, same
    minibatches), both starts recorded; bad starts are refused."""
    from safegene_runtime.calibration import best_start, calibrate

    assert best_start([0.3, 0.2, 0.2]) == 1
    kw = dict(steps=6, lr=0.1, seed=0, **FAST)
    args = (fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"])
    single = {x: calibrate(*args, init=x, **kw) for x in (1.0, 0.0)}
    both = calibrate(*args, init=[1.0, 0.0], **kw)
    losses = {x: c.meta["loss"]["after"]["total"] for x, c in single.items()}
    assert losses[1.0] != losses[0.0]  # the two starts end in different places
    kept = min(losses, key=losses.get)
    assert both.meta["chosen_init"] == kept and both.meta["method"]["init"] == [1.0, 0.0]
    assert both.layers == pytest.approx(single[kept].layers, abs=1e-6)
    assert both.meta["loss"]["after"]["total"] == pytest.approx(losses[kept], abs=1e-6)
    assert [s["init"] for s in both.meta["starts"]] == [1.0, 0.0]
    for s in both.meta["starts"]:
        assert s["after"] == pytest.approx(losses[s["init"]], abs=1e-6)
        assert {int(l): v for l, v in s["lambdas"].items()} == pytest.approx(single[s["init"]].layers, abs=1e-6)
    assert "starts" not in single[1.0].meta and single[1.0].meta["method"]["init"] == 1.0
    for bad in ([], [1.0, 5.0], -0.5):
        with pytest.raises(ValueError, match="init must be one or more starting"):
            calibrate(*args, init=bad, **FAST)


def test_deterministic_for_a_seed_and_uses_the_manifest_selection(fam, shots, tmp_path):
    from safegene_runtime.calibration import calibrate

    # A safety adapter whose manifest selects layers 2 and 3.
    with ArtifactWriter(dest=tmp_path / "safety-sel", kind="safety_adapter") as w:
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(fam.safety / f, w.tmp / f)
        w.manifest["selection"] = {"scores": {"0": 0.1, "1": 0.2, "2": 2.0, "3": 3.0}, "selected": [2, 3]}
    kw = dict(seed=3, steps=4, lr=0.1, batch_size=4, **FAST)
    c1 = calibrate(fam.aligned, fam.task, w.path, shots["harmful"], shots["task"], shots["benign"], **kw)
    c2 = calibrate(fam.aligned, fam.task, w.path, shots["harmful"], shots["task"], shots["benign"], **kw)
    assert c1.layers == c2.layers
    assert c1.meta["loss"]["history"] == c2.meta["loss"]["history"]
    assert c1.layers[0] == 0.0 and c1.layers[1] == 0.0  # unselected layers stay off
    assert c1.layers[2] != 1.0 and c1.meta["selected_layers"] == [2, 3]
    assert c1.meta["selection_origin"] == "manifest"


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_calibrate_cli(fam, shots, run_cli, tmp_path):
    h = _jsonl(tmp_path / "h.jsonl", shots["harmful"][:4])
    t = _jsonl(tmp_path / "t.jsonl", shots["task"][:4])
    common = ["calibrate", "--base", fam.aligned, "--task", fam.task, "--safety", fam.safety]
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--steps", "2", "--max-new-tokens", "6",
                "--out", tmp_path / "c.json")
    assert r.code == 0, r.err
    raw = json.loads((tmp_path / "c.json").read_text())
    assert set(raw["layers"]) == {"0", "1", "2", "3"} and raw["shots"]["harmful"]["file_sha256"]
    # no --benign-shots: the default procedure still has benign shots, its 16 edgy-benign training prompts
    assert raw["shots"]["benign"]["count"] == 16 and raw["shots"]["benign"]["given_used"] == 0
    # the losses over all shots are diagnostics: off by default (the load-time path), the same lambdas with them
    assert raw["loss"]["before"] is None and raw["loss"]["at_zero"] is None and "not computed" in r.out
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--steps", "2", "--max-new-tokens", "6",
                "--report-losses", "--out", tmp_path / "c-report.json")
    assert r.code == 0, r.err
    reported = json.loads((tmp_path / "c-report.json").read_text())
    assert reported["layers"] == raw["layers"] and reported["loss"]["history"] == raw["loss"]["history"]
    assert reported["onpolicy"]["non_refusals"][:-1] == raw["onpolicy"]["non_refusals"]
    assert reported["loss"]["after"]["total"] > 0 and "at lambda=0" in r.out and reported["config_digest"] == \
        raw["config_digest"]
    # Malformed shots file, missing file, broken adapter: exit 1, a clear message, no output file.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": 3}\n')
    r = run_cli(*common, "--harmful-shots", bad, "--task-shots", t, "--out", tmp_path / "x1.json")
    assert r.code == 1 and "bad.jsonl:2" in r.err and not (tmp_path / "x1.json").exists()
    r = run_cli(*common, "--harmful-shots", tmp_path / "none.jsonl", "--task-shots", t, "--out", tmp_path / "x2.json")
    assert r.code == 1 and "none.jsonl" in r.err and not (tmp_path / "x2.json").exists()
    r = run_cli("calibrate", "--base", fam.aligned, "--task", tmp_path / "notask", "--safety", fam.safety,
                "--harmful-shots", h, "--task-shots", t, "--out", tmp_path / "x3.json")
    assert r.code == 1 and "notask" in r.err and not (tmp_path / "x3.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--layers", "7", "--out", tmp_path / "x4.json")
    assert r.code == 1 and "[7]" in r.err and not (tmp_path / "x4.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--margin-tokens", "0", "--out", tmp_path / "x5.json")
    assert r.code == 1 and "margin_tokens must be positive" in r.err and not (tmp_path / "x5.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--benign-tokens", "-2", "--out", tmp_path / "x6.json")
    assert r.code == 1 and "benign_tokens must be positive" in r.err and not (tmp_path / "x6.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--benign-contrast", "-1", "--out", tmp_path / "x7.json")
    assert r.code == 1 and "benign_contrast" in r.err and not (tmp_path / "x7.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--init", "one", "--out", tmp_path / "x8.json")
    assert r.code == 1 and "--init 'one'" in r.err and not (tmp_path / "x8.json").exists()
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--init", "1,9", "--out", tmp_path / "x9.json")
    assert r.code == 1 and "init must be one or more" in r.err and not (tmp_path / "x9.json").exists()
    # Two starts: both recorded, the kept one named.
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--steps", "1", "--max-new-tokens", "6",
                "--init", "1,0", "--out", tmp_path / "two.json")
    assert r.code == 0, r.err
    raw = json.loads((tmp_path / "two.json").read_text())
    assert [s["init"] for s in raw["starts"]] == [1.0, 0.0] and f"kept the start {raw['chosen_init']:g}" in r.out
    # --layers all: every layer of the safety adapter, whatever its manifest selects.
    r = run_cli(*common, "--harmful-shots", h, "--task-shots", t, "--steps", "1", "--max-new-tokens", "6",
                "--layers", "all", "--out", tmp_path / "all.json")
    assert r.code == 0, r.err
    raw = json.loads((tmp_path / "all.json").read_text())
    assert raw["selected_layers"] == [0, 1, 2, 3] and raw["selection_origin"] == "all layers (argument)"
