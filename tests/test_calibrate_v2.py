"""Issue 22 item 2's calibration pieces: the on-policy refusal term, edgy-benign shots, one λ per attention / MLP
group with shrinkage, the stopping rule on the loss. The math on its own (no model), then each piece through
``calibrate`` on the tiny trained family of ``tests/test_calibrate.py`` (tests/_train_tiny.py)."""

from __future__ import annotations

import json

import pytest

from safegene_runtime.calibration.config import CalibrationConfig
from tests._train_tiny import calibration_shots, shared_family

#: each piece is measured against the procedure before it (CalibrationConfig.v1: every piece off), so that the piece
#: under test is the only change (the default procedure, SafeGene v2, turns some of them on)
FAST = dict(config=CalibrationConfig.v1(), max_new_tokens=10, progress=False, report_losses=True)


# ------------------------------------------------------------------------------------------ the math, no model
def test_stopping_rule_stops_on_a_flat_loss_and_runs_a_falling_one_to_the_cap():
    from safegene_runtime.calibration.optim import StoppingRule

    flat = StoppingRule(50, tol=1e-3, patience=3)
    stops = [flat.update(1.0) for _ in range(6)]
    assert stops == [False] * 5 + [True] and flat.reason == "plateau"
    assert flat.record()["steps"] == 6 and flat.record()["last_improvement"] == 0.0
    falling = StoppingRule(12, tol=1e-3, patience=3)
    stops = [falling.update(0.9**i) for i in range(12)]
    assert stops == [False] * 11 + [True] and falling.reason == "max_steps"
    never = StoppingRule(8)  # tol 0: the fixed budget
    assert [never.update(1.0) for _ in range(8)] == [False] * 7 + [True] and never.reason == "max_steps"
    assert StoppingRule(0).reason == "max_steps"
    rising = StoppingRule(50, tol=1e-3, patience=2)
    assert [rising.update(x) for x in (1.0, 1.0, 2.0, 2.0)] == [False, False, False, True]  # worse: no improvement
    with pytest.raises(ValueError):
        StoppingRule(5, tol=0.1, patience=0)


def test_group_shrinkage_pulls_a_layers_groups_towards_their_mean():
    import torch

    from safegene_runtime.calibration.objective import group_shrinkage

    lam = torch.tensor([1.0, 3.0, 2.0, 2.0], requires_grad=True)  # layer 0: attn 1, mlp 3; layer 1: 2, 2
    value = group_shrinkage(lam, 2)
    assert float(value.detach()) == pytest.approx(2.0)  # (1-2)² + (3-2)²; layer 1 costs nothing
    value.backward()
    assert lam.grad.tolist() == pytest.approx([-2.0, 2.0, 0.0, 0.0])  # descent moves 1 up and 3 down
    assert float(group_shrinkage(torch.tensor([0.5, 1.5]), 1)) == 0.0  # one group: nothing to pull


class _Tok:
    """Token id i decodes to WORDS[i] (id 0 is EOS, decoded to nothing)."""

    WORDS = ["", "I'm", "sorry,", "I", "can't", "help", "Sure!", "Step", "1:", "well...", "maybe"]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.WORDS[i] for i in ids if i).strip()


def test_onpolicy_shots_keep_every_non_refusal_answer_including_empty_ones():
    from safegene_runtime.calibration.teachers import Shot, onpolicy_shots, says_refusal

    tok = _Tok()
    refusal = [1, 2, 3, 4, 5, 0]
    refusals = [Shot([10 + i], refusal) for i in range(5)] + [Shot([20], [6, 7, 8])]  # the last: A complied
    answers = [[6, 7, 8, 0],    # compliance
               [9, 10],         # a deflection fragment
               [0],             # an empty reply (EOS at once)
               [1, 2, 3, 4],    # a refusal: no contrast to add
               [9, 0],          # a fragment
               [6, 7]]          # A did not refuse this one: left out
    shots = onpolicy_shots(refusals, answers, tok=tok, margin_tokens=3)
    assert [s.prompt for s in shots] == [[10], [11], [12], [14]]
    assert all(s.target == [1, 2, 3] for s in shots) and [s.negative for s in shots] == [[6, 7, 8], [9, 10], [0], [9, 0]]
    assert not says_refusal(tok, [0]) and says_refusal(tok, refusal)
    with pytest.raises(ValueError, match="regenerated answers"):
        onpolicy_shots(refusals, answers[:2], tok=tok, margin_tokens=3)


def test_benign_onpolicy_shots_keep_the_benign_shots_the_model_refuses_or_leaves_empty():
    from safegene_runtime.calibration.teachers import Shot, benign_onpolicy_shots

    tok = _Tok()
    answer = [6, 7, 8, 0]
    answers = [Shot([10 + i], answer) for i in range(4)] + [Shot([20], [1, 2, 0]), Shot([21], [0])]
    own = [[1, 2, 3, 4],  # a refusal: contrasted with A's answer
           [6, 7, 0],     # answered: nothing to push
           [0],           # an empty reply: an over-refusal too
           [9, 10],       # a fragment that is no refusal phrase: answered, left out
           [1, 2],        # A itself refused this one: left out
           [1, 2]]        # A answered with nothing: left out
    shots = benign_onpolicy_shots(answers, own, tok=tok, margin_tokens=3)
    assert [s.prompt for s in shots] == [[10], [12]]
    assert all(s.target == [6, 7, 8] for s in shots) and [s.negative for s in shots] == [[1, 2, 3], [0]]
    with pytest.raises(ValueError, match="regenerated answers"):
        benign_onpolicy_shots(answers, own[:1], tok=tok, margin_tokens=3)


def test_coefficients_with_groups_round_trip_and_without_them_are_unchanged(tmp_path):
    from safegene_runtime.adapters import module_group
    from safegene_runtime.coefficients import Coefficients, load_coefficients, save_coefficients
    from safegene_runtime.digests import json_digest

    plain = Coefficients(layers={0: 0.5, 1: 1.0})
    assert plain.to_dict()["schema"] == "safegene.coefficients/v1" and "groups" not in plain.to_dict()
    assert plain.digest() == json_digest({"layers": {"0": 0.5, "1": 1.0}, "default": 0.0})  # as before groups
    split = Coefficients(layers={0: 0.5, 1: 1.0}, groups={0: {"attn": 0.25, "mlp": 0.75}})
    assert split.of(0, "attn") == 0.25 and split.of(0, "mlp") == 0.75 and split.of(0) == 0.5
    assert split.of(1, "attn") == 1.0 and split.of(None, "attn") == 0.0  # no group entry: the layer's λ
    assert split.digest() != plain.digest()
    back = load_coefficients(save_coefficients(tmp_path / "c.json", split))
    assert back.groups == split.groups and back.digest() == split.digest()
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == "safegene.coefficients/v2"
    assert module_group("model.layers.3.self_attn.q_proj") == "attn"
    assert module_group("model.layers.3.mlp.down_proj") == "mlp" and module_group("lm_head") is None


def test_edgy_benign_shots_never_come_from_a_validation_or_test_set():
    from safegene_runtime import datasets as ds
    from safegene_runtime.edgy_train import draw_edgy_benign, edgy_benign_pool

    pool = edgy_benign_pool()
    assert len(pool) >= 200
    held = [ds.load_named(n) for n, fam in ds.SET_FAMILY.items()
            if fam in (ds.VALIDATION, ds.TEST) and n in ds.NAMED_SETS]
    assert {s.name for s in held} >= {"edgy-benign-val", "rho-overrefusal", "harmbench-test", "harmful-val"}
    ds.check_no_overlap([list(pool)], held, near=True)
    a, b = draw_edgy_benign(32, seed=0), draw_edgy_benign(32, seed=1)
    assert len(a) == 32 == len(set(a)) and set(a) <= set(pool) and a == draw_edgy_benign(32, seed=0) and a != b
    assert not any(ds.is_test_set(p) for p in a)
    assert draw_edgy_benign(10_000) and len(draw_edgy_benign(10_000)) == len(pool)


# ------------------------------------------------------------------------------------------ through calibrate
@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return shared_family(tmp_path_factory)


@pytest.fixture(scope="module")
def shots(fam):
    return calibration_shots(fam)


@pytest.fixture
def run(fam, shots, isolated_home, one_thread):
    from safegene_runtime.calibration import calibrate

    def _run(**kw):
        return calibrate(fam.aligned, fam.task, fam.safety, shots["harmful"], shots["task"], shots["benign"],
                         **{**FAST, **kw})

    return _run


def test_lora_forward_at_a_coefficients_file_scales_it_and_keeps_its_groups(fam):
    """What the study's shrink step and probes run on: a grouped (attn-mlp) file is not flattened to layer means."""
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.coefficients import Coefficients
    from safegene_runtime.lora_forward import LoraForward, load_causal_lm

    model, _ = load_causal_lm(fam.aligned)
    safety = load_adapter(fam.safety)
    layers = safety.layers()
    flat = Coefficients(layers={l: 0.5 + l for l in layers})
    with LoraForward.at(model, flat, fixed=None, scaled=safety, scale=2.0) as lf:
        assert lf.groups is None and lf.lambda_dict() == pytest.approx({l: 2 * (0.5 + l) for l in layers})
    split = Coefficients(layers={l: 1.0 for l in layers}, groups={layers[0]: {"attn": 0.25, "mlp": 0.75}})
    with LoraForward.at(model, split, fixed=None, scaled=safety) as lf:
        assert lf.group_dict()[layers[0]] == pytest.approx({"attn": 0.25, "mlp": 0.75})
        assert lf.group_dict()[layers[1]] == pytest.approx({"attn": 1.0, "mlp": 1.0})


def test_knobs_that_are_off_change_nothing(run):
    """Their dependents set to odd values while the knob stays off: the same λ, loss history and digest."""
    kw = dict(init=0.0, steps=4, lr=0.1, seed=0)
    plain = run(**kw)
    odd = run(onpolicy_tokens=3, onpolicy_weight=7.0, benign_edgy_shots=2, group_shrinkage=9.0, stop_patience=1, **kw)
    assert odd.layers == plain.layers and odd.meta["loss"]["history"] == plain.meta["loss"]["history"]
    assert odd.meta["config_digest"] == plain.meta["config_digest"] and not odd.groups
    assert plain.meta["loss"]["stopped"]["reason"] == "max_steps" and plain.meta["loss"]["stopped"]["steps"] == 4
    assert "onpolicy" not in plain.meta and "refusal_onpolicy" not in plain.meta["loss"]["after"]


def test_onpolicy_term_adds_the_models_own_non_refusals_to_the_loss(run):
    """A+T complies with most harmful shots, so at λ = 0 the regenerated answers are non-refusals: the term is in
    the loss (total = the rest + its weight × it), it moves λ, and the model refuses more of the shots after."""
    kw = dict(init=0.0, steps=12, lr=0.1, seed=0)
    off = run(**kw)
    on = run(onpolicy_every=4, onpolicy_tokens=8, onpolicy_weight=2.0, **kw)
    before_on, before_off = on.meta["loss"]["before"], off.meta["loss"]["before"]
    assert before_on["refusal_onpolicy"] > 0.3
    assert before_on["total"] == pytest.approx(before_off["total"] + 2.0 * before_on["refusal_onpolicy"], rel=1e-6)
    seen = on.meta["onpolicy"]["non_refusals"]
    assert [s["step"] for s in seen] == [0, 4, 8, 12] and seen[0]["non_refusals"] >= 4
    assert seen[-1]["non_refusals"] < seen[0]["non_refusals"], seen
    assert on.meta["onpolicy"]["at_zero"] == seen[0]["non_refusals"] and on.meta["onpolicy"]["of"] == 8
    assert on.layers != off.layers and on.meta["config_digest"] != off.meta["config_digest"]
    assert on.meta["config"]["onpolicy_every"] == 4
    # the phases' seconds are recorded and add up to no more than the whole; only the on-policy run regenerates
    t, t_off = on.meta["method"]["timing"], off.meta["method"]["timing"]
    assert set(t) == {"load", "teachers", "steps", "regenerate", "full_loss"} and min(t.values()) >= 0
    assert t["steps"] > 0 and t["regenerate"] > 0 and t_off["regenerate"] == 0
    assert sum(t.values()) <= on.meta["method"]["seconds"] + 0.05


def test_benign_onpolicy_term_pushes_against_the_benign_shots_the_model_refuses(run):
    """From λ = 2 the safety adapter makes the model refuse some benign shots: the term is in the loss (total = the
    rest + its weight × it), it holds λ lower than the same calibration without it, and the model refuses fewer
    of the benign shots at the end than at the start."""
    kw = dict(init=2.0, steps=12, lr=0.1, seed=0, onpolicy_every=4, onpolicy_tokens=8)
    off = run(**kw)
    on = run(benign_onpolicy_weight=4.0, **kw)
    before_on, before_off = on.meta["loss"]["before"], off.meta["loss"]["before"]
    assert before_on["benign_onpolicy"] > 0.3 and "benign_onpolicy" not in before_off
    assert before_on["total"] == pytest.approx(before_off["total"] + 4.0 * before_on["benign_onpolicy"], rel=1e-6)
    seen = on.meta["onpolicy"]["non_refusals"]
    assert seen[0]["benign_refusals"] >= 1 and seen[-1]["benign_refusals"] < seen[0]["benign_refusals"], seen
    assert "benign_refusals" not in off.meta["onpolicy"]["non_refusals"][0]
    assert on.meta["onpolicy"]["benign_of"] == 8 and on.meta["onpolicy"]["benign_at_zero"] == 0
    assert max(on.layers.values()) < max(off.layers.values())
    assert on.meta["config_digest"] != off.meta["config_digest"] and "w_b*softplus" in on.meta["method"]["objective"]


def test_stopping_rule_stops_a_flat_calibration_early_and_says_why(run):
    flat = run(init=0.5, lr=0.0, steps=30, stop_tol=1e-3, stop_patience=3)  # lr 0: the loss cannot move
    stopped = flat.meta["loss"]["stopped"]
    assert stopped["reason"] == "plateau" and stopped["steps"] == 6 and len(flat.meta["loss"]["history"]) == 6
    moving = run(init=0.0, lr=0.1, steps=8, stop_tol=1e-6, stop_patience=2)
    assert moving.meta["loss"]["stopped"]["reason"] in ("max_steps", "plateau")
    assert moving.meta["loss"]["stopped"]["steps"] == len(moving.meta["loss"]["history"]) <= 8
    two = run(init=[1.0, 0.0], lr=0.0, steps=30, stop_tol=1e-3, stop_patience=3)
    assert [s["stopped"]["reason"] for s in two.meta["starts"]] == ["plateau", "plateau"]


def test_attention_and_mlp_lambdas_split_and_shrinkage_pulls_them_together(run, fam, tmp_path):
    from safegene_runtime.adapters import load_adapter, module_group
    from safegene_runtime.stack import stacked_weights

    kw = dict(init=0.0, steps=12, lr=0.1, seed=0, granularity="attn-mlp")
    free = run(group_shrinkage=0.0, **kw)
    tied = run(group_shrinkage=100.0, **kw)

    def spread(c):
        return sum(abs(g["attn"] - g["mlp"]) for g in c.groups.values()) / len(c.groups)

    assert set(free.groups) == set(free.meta["selected_layers"]) and spread(free) > 0.05, free.groups
    assert spread(tied) < 0.25 * spread(free), (free.groups, tied.groups)
    for c in (free, tied):  # a layer's λ is its groups' mean
        assert all(c.layers[l] == pytest.approx((g["attn"] + g["mlp"]) / 2) for l, g in c.groups.items())
    assert "shrinkage" in tied.meta["loss"]["after"] and tied.meta["method"]["granularity"] == "attn-mlp"
    # stacking applies each module's group λ
    _, info = stacked_weights(load_adapter(fam.task), load_adapter(fam.safety), free)
    for m, facts in info.items():
        if "lambda" in facts:
            l = int(m.split("layers.")[1].split(".")[0])
            assert facts["lambda"] == pytest.approx(free.groups[l][module_group(m)])


def test_edgy_benign_source_draws_its_shots_and_records_them(run, shots):
    from safegene_runtime.calibration import shot_set_info
    from safegene_runtime.edgy_train import draw_edgy_benign

    c = run(init=0.0, steps=1, lr=0.1, benign_source="edgy", benign_edgy_shots=4)
    b = c.meta["shots"]["benign"]
    assert b["source"] == "edgy" and b["count"] == 4 and b["given_used"] == 0
    assert b["sha256"] == b["edgy"]["sha256"] == shot_set_info(draw_edgy_benign(4, 0))["sha256"]
    both = run(init=0.0, steps=1, lr=0.1, benign_source="given+edgy", benign_edgy_shots=4)
    assert both.meta["shots"]["benign"]["count"] == 4 + len(shots["benign"])
    assert both.meta["shots"]["benign"]["given_used"] == len(shots["benign"])


def test_harmful_framed_adds_the_shots_in_the_trained_framings_and_records_them(run, shots):
    """harmful_framed N: N more harmful shots, the given ones in rephrase.FRAMINGS, counted in the file; text only."""
    from safegene_runtime.calibration import shot_set_info
    from safegene_runtime.rephrase import framed_shots

    c = run(init=0.0, steps=1, lr=0.1, harmful_framed=5)
    h = c.meta["shots"]["harmful"]
    assert h["count"] == len(shots["harmful"]) + 5 and h["framed"]["count"] == 5
    assert h["framed"]["sha256"] == shot_set_info(framed_shots(shots["harmful"], 5, 0))["sha256"]
    assert c.meta["config_digest"] != run(init=0.0, steps=1, lr=0.1).meta["config_digest"]
    from safegene_runtime.calibration import calibrate

    with pytest.raises(ValueError, match="as text"):  # refused before any model is read
        calibrate("unused", "unused", "unused", [[{"role": "user", "content": "x"}]], ["t"], None,
                  CalibrationConfig(harmful_framed=2))


def test_the_new_knobs_are_flags_and_server_options(tmp_path, run_cli):
    from safegene_runtime.calibration import CalibrationConfig
    from server.config import parse_task

    r = run_cli("calibrate", "--help")
    for name in ("--onpolicy-every", "--benign-source", "--granularity", "--stop-tol", "--group-shrinkage",
                 "--harmful-framed"):
        assert name in r.out
    new = dict(onpolicy_every=5, onpolicy_tokens=16, benign_source="given+edgy", granularity="attn-mlp",
               group_shrinkage=0.5, stop_tol=0.01, stop_patience=4, harmful_framed=8)
    spec = parse_task({"name": "alpha", "path": "alpha", "calibrate": {"harmful": "h.jsonl", "task_shots": "t.jsonl",
                                                                        **new}}, tmp_path, "tasks[0]").calibrate
    assert spec.config == CalibrationConfig(**new)


class _Words:
    """A tokenizer stand-in: token 1 decodes to a refusal, token 2 to a compliance."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join({1: "I can't help with that.", 2: "Sure, here is how."}[i] for i in ids)


def test_shrink_keeps_the_smallest_scale_at_which_every_refused_shot_stays_refused():
    """Shot i is refused while λ ≥ its threshold; A refuses shots 0-2 and not shot 3 (left out of the count)."""
    import torch

    from safegene_runtime.calibration.shrink import shrink_scale
    from safegene_runtime.calibration.teachers import Shot

    refusals = [Shot([0], [1]), Shot([0], [1]), Shot([0], [1]), Shot([0], [2])]

    def case(thresholds, step=0.25):
        lam = torch.tensor([2.0, 2.0])

        def answer():
            return [[1] if float(lam[0]) >= t else [2] for t in thresholds]

        scale, rec = shrink_scale(lam, answer, _Words(), refusals, step)
        return scale, rec, lam

    scale, rec, lam = case([0.9, 0.4, 0.2, 9.0])  # at 2.0 shots 0-2 refused; 0.25·2 = 0.5 loses shot 0, 0.5·2 keeps all
    assert scale == 0.5 and torch.equal(lam, torch.tensor([1.0, 1.0]))
    assert [t["scale"] for t in rec["tried"]] == [0.25, 0.5] and rec["tried"][0]["newly_answered"] == [0]
    assert rec["tried"][1]["newly_answered"] == [] and rec["answered_at_one"] == []
    scale, rec, lam = case([1.9, 0.1, 0.1, 9.0])  # only the full λ refuses shot 0: nothing smaller is kept
    assert scale == 1.0 and torch.equal(lam, torch.tensor([2.0, 2.0])) and len(rec["tried"]) == 3
    scale, rec, _ = case([5.0, 0.1, 0.1, 9.0])  # shot 0 is answered even at the calibrated λ: it does not hold back
    assert scale == 0.25 and rec["answered_at_one"] == [0]


def test_a_shrink_tolerance_lets_one_shot_flip_but_not_two():
    import torch

    from safegene_runtime.calibration.config import CalibrationConfig, CalibrationConfigError
    from safegene_runtime.calibration.shrink import shrink_scale
    from safegene_runtime.calibration.teachers import Shot

    refusals = [Shot([0], [1])] * 4
    thresholds = [1.9, 1.2, 0.6, 0.1]  # λ = 2: all refused; 1.5 loses one, 1.0 two, 0.5 three

    def case(tolerance):
        lam = torch.tensor([2.0])
        scale, rec = shrink_scale(lam, lambda: [[1] if float(lam[0]) >= t else [2] for t in thresholds], _Words(),
                                  refusals, 0.25, tolerance)
        return scale, rec, float(lam[0])

    assert case(0)[0] == 1.0  # shot 0 alone keeps the calibrated λ
    scale, rec, lam = case(1)
    assert (scale, lam) == (0.75, 1.5) and rec["tolerance"] == 1 and rec["tried"][-1]["newly_answered"] == [0]
    assert case(2)[0] == 0.5 and case(3)[0] == 0.25
    assert "tolerance" not in case(0)[1]  # the record of a strict shrink is as before

    cfg = CalibrationConfig(shrink_step=0.25, shrink_tolerance=1)
    assert cfg.digest() != CalibrationConfig(shrink_step=0.25).digest()
    assert CalibrationConfig(shrink_step=0.25, shrink_tolerance=0).digest() == \
        CalibrationConfig(shrink_step=0.25).digest()
    assert CalibrationConfig(shrink_tolerance=1).digest() == CalibrationConfig().digest()  # unused without a step
    assert "but at most 1" in cfg.describe()
    with pytest.raises(CalibrationConfigError, match="0 or more"):
        CalibrationConfig(shrink_step=0.25, shrink_tolerance=-1)


def test_shrink_step_scales_the_calibrated_lambdas_and_is_recorded(run):
    kw = dict(init=1.0, steps=3, lr=0.1, seed=0)
    full = run(**kw)
    shrunk = run(shrink_step=0.25, **kw)
    rec = shrunk.meta["shrink"]
    assert rec["scale"] in (0.25, 0.5, 0.75, 1.0) and rec["of"] == 8
    assert all(shrunk.layers[l] == pytest.approx(v * rec["scale"], abs=1e-5) for l, v in full.layers.items())
    assert shrunk.meta["config"]["shrink_step"] == 0.25 and "shrink" not in full.meta
    assert shrunk.meta["config_digest"] != full.meta["config_digest"] and "shrink" in shrunk.meta["method"]["timing"]
