"""CalibrationConfig: the one source of the calibration procedure's knobs (no model runs here).

Its checks, its round trip, its digest rule; the CLI flags, the server's ``calibrate:`` block and the SmolLM2 study's
stage hashes all derived from it. The study's hashes are compared with the hand-written drops they replaced, both
computed here, so a stage built before the config existed keeps its folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from safegene_runtime.calibration import CalibrationConfig, CalibrationConfigError
from safegene_runtime.digests import json_digest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad, name, needle", [
    (dict(steps=-1), "steps", "steps must be 0 or more"),
    (dict(batch_size=0), "batch_size", "batch_size must be positive"),
    (dict(benign_tokens=0), "benign_tokens", "benign_tokens must be positive"),
    (dict(max_new_tokens=2.5), "max_new_tokens", "must be an integer"),
    (dict(seed=True), "seed", "must be an integer"),
    (dict(lr=-0.1), "lr", "lr must be non-negative"),
    (dict(margin_target=float("nan")), "margin_target", "margin_target must be a finite number"),
    (dict(lambda_max=0.0), "lambda_max", "lambda_max must be a positive number"),
    (dict(init=[]), "init", "init must be one or more starting"),
    (dict(init=[1.0, 5.0]), "init", "init must be one or more starting"),
    (dict(init=0.5, lambda_max=0.25), "init", "lambda_max=0.25"),
    (dict(layers=[]), "layers", "layers must be a non-empty list"),
    (dict(layers="some"), "layers", "'all' or 'selection'"),
    (dict(refusal_loss="kl"), "refusal_loss", "refusal_loss must be one of margin, ce"),
    (dict(optimizer="sgd"), "optimizer", "optimizer must be one of adam, adam-shared"),
    (dict(stepz=3), "stepz", "unknown option(s) stepz"),
    (dict(onpolicy_every=-1), "onpolicy_every", "onpolicy_every must be 0 or more"),
    (dict(onpolicy_tokens=0), "onpolicy_tokens", "onpolicy_tokens must be positive"),
    (dict(onpolicy_weight=-1.0), "onpolicy_weight", "onpolicy_weight must be non-negative"),
    (dict(benign_source="test"), "benign_source", "benign_source must be one of given, edgy"),
    (dict(benign_edgy_shots=0), "benign_edgy_shots", "benign_edgy_shots must be positive"),
    (dict(granularity="module"), "granularity", "granularity must be one of layer, attn-mlp"),
    (dict(group_shrinkage=-0.1), "group_shrinkage", "group_shrinkage must be non-negative"),
    (dict(stop_tol=float("inf")), "stop_tol", "stop_tol must be a finite number"),
    (dict(stop_patience=0), "stop_patience", "stop_patience must be positive"),
    (dict(shrink_step=1.0), "shrink_step", "shrink_step must be in"),
    (dict(benign_onpolicy_weight=-1.0), "benign_onpolicy_weight", "benign_onpolicy_weight must be non-negative"),
    (dict(benign_onpolicy_weight=2.0, onpolicy_every=0), "benign_onpolicy_weight", "set onpolicy_every > 0"),
])
def test_a_bad_option_is_refused_with_its_name(bad, name, needle):
    with pytest.raises(CalibrationConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        CalibrationConfig.from_dict(bad)
    assert e.value.field == name
    with pytest.raises(AttributeError):  # frozen
        CalibrationConfig().steps = 3  # type: ignore[misc]


def test_round_trip_and_normal_forms():
    c = CalibrationConfig(init=[1, 0], layers=[3, 1, 3], lr=1, benign_contrast=0.3, max_target_tokens=None)
    assert c.init == (1.0, 0.0) and c.layers == (1, 3) and isinstance(c.lr, float)
    d = c.to_dict()
    assert set(d) == {f.name for f in fields(CalibrationConfig)}
    back = CalibrationConfig.from_dict(json.loads(json.dumps(d)))
    assert back == c and back.digest() == c.digest()
    assert CalibrationConfig(init=[0.5]).init == 0.5  # one listed start is that start
    assert c.replace(steps=7) == CalibrationConfig.from_dict({**d, "steps": 7})
    with pytest.raises(CalibrationConfigError, match="unknown option"):
        c.replace(step=7)


def test_digest_covers_what_differs_from_the_reference_and_only_what_is_used():
    refs = {f.name: f.metadata.get("reference", f.default) for f in fields(CalibrationConfig)}
    reference = CalibrationConfig(**refs)
    assert reference.digest_fields() == {}  # every knob at its reference value: nothing to tell apart
    assert reference.digest() == json_digest({})
    default = CalibrationConfig()
    # the fields whose default moved after stages were hashed are in the default's digest, the others are not
    moved = {k for k, v in refs.items() if v != getattr(default, k)}
    assert set(default.digest_fields()) == moved
    # any change away from the default changes the digest
    changes = dict(seed=1, steps=3, lr=0.2, beta=0.5, gamma=0.5, lambda_max=2.0, penalty=0.0, init=(1.0, 0.0),
                   max_new_tokens=24, max_prompt_tokens=64, max_target_tokens=8, batch_size=4, gen_batch_size=8,
                   layers=None, refusal_loss="ce", margin_tokens=2, margin_target=1.0, benign_tokens=4,
                   benign_contrast=0.5, optimizer="adam-shared", onpolicy_every=3, onpolicy_tokens=12,
                   onpolicy_weight=2.0, benign_source="edgy", benign_edgy_shots=8, granularity="attn-mlp",
                   group_shrinkage=1.0, stop_tol=0.01, stop_patience=5, shrink_step=0.25, harmful_framed=4,
                   benign_onpolicy_weight=2.0, shrink_tolerance=1)
    assert set(changes) == set(refs)  # every field is exercised
    # a knob read only when another is on is exercised with that one on (alone it is unused: rule 2)
    needs = dict(onpolicy_tokens=dict(onpolicy_every=5), onpolicy_weight=dict(onpolicy_every=5),
                 benign_edgy_shots=dict(benign_source="edgy"), group_shrinkage=dict(granularity="attn-mlp"),
                 stop_patience=dict(stop_tol=0.01), shrink_tolerance=dict(shrink_step=0.25))
    digests = {k: default.replace(**{**needs.get(k, {}), k: v}).digest() for k, v in changes.items()}
    assert default.digest() not in digests.values() and len(set(digests.values())) == len(digests)
    # ...and with its enabler off (the default turns some on), it enters no digest
    off = default.replace(onpolicy_every=0, benign_source="given", granularity="layer", stop_tol=0.0)
    for k, enabler in needs.items():
        assert off.replace(**{k: changes[k]}).digest() == off.digest(), k
    # a knob the procedure does not read under this config, or an equivalent spelling, hashes alike
    ce = CalibrationConfig.v1(refusal_loss="ce")  # the on-policy term off (a margin: it reads margin_tokens)
    assert ce.replace(margin_tokens=9, margin_target=2.0).digest() == ce.digest()
    assert ce.replace(benign_contrast=0.3, margin_tokens=9).digest() != ce.replace(benign_contrast=0.3).digest()
    assert default.replace(gamma=0.0, benign_tokens=4).digest() == default.replace(gamma=0.0).digest()
    assert default.replace(benign_tokens=16).digest() == default.digest()  # = max_target_tokens: the whole answer
    # the on-policy term is a margin: under refusal_loss="ce" it still reads margin_tokens and margin_target
    assert ce.replace(onpolicy_every=5, margin_tokens=9).digest() != ce.replace(onpolicy_every=5).digest()
    assert ce.replace(onpolicy_every=5, margin_target=1.0).digest() != ce.replace(onpolicy_every=5).digest()


def test_new_knobs_at_their_defaults_leave_every_digest_as_it_was():
    """Issue 22's knobs (on-policy term, benign source, granularity, stopping rule, shrink) reproduce the procedure
    before them at their defaults, so they enter no digest there: pinned digests of configs hashed before they
    existed."""
    added = {"onpolicy_every", "onpolicy_tokens", "onpolicy_weight", "benign_source", "benign_edgy_shots",
             "granularity", "group_shrinkage", "stop_tol", "stop_patience", "shrink_step", "harmful_framed",
             "benign_onpolicy_weight", "shrink_tolerance"}
    # the procedure before them, every field spelled out (so a later change of the defaults does not move this)
    old_default = dict(seed=0, steps=40, lr=0.05, beta=1.0, gamma=1.0, lambda_max=4.0, penalty=0.001, init=1.0,
                       max_new_tokens=48, max_prompt_tokens=128, max_target_tokens=16, batch_size=8,
                       gen_batch_size=32, layers=None, refusal_loss="margin", margin_tokens=4, margin_target=0.0,
                       benign_tokens=None, benign_contrast=0.0, optimizer="adam")
    off = dict(onpolicy_every=0, benign_source="given", granularity="layer", stop_tol=0.0, shrink_step=0.0,
               harmful_framed=0)
    assert set(old_default) | added == set(CalibrationConfig.field_names())
    # digests computed at commit 96974e5, before the knobs existed
    pinned = {(): "bf1c87addbbd6ac183478f3a968136d6f575170a8fcde8c10f3d6a3939bff4af",
              (("init", (1, 0)), ("layers", "all"), ("benign_contrast", 0.3)):
                  "afc2b63390b938ed561e8e95a571972fa95490d8d22d844aaf0069d80dc0c982"}
    # the procedure before SafeGene v2, as the study rebuilds it, is that old default
    assert CalibrationConfig.v1().digest() == CalibrationConfig(**old_default, **off).digest() == pinned[()]
    for change, digest in pinned.items():
        c = CalibrationConfig(**{**old_default, **off, **dict(change)})
        assert not added & set(c.digest_fields()) and c.digest() == digest, change
        # the knobs that only matter once one of those four is on do not enter either, whatever their value
        assert c.replace(onpolicy_tokens=5, onpolicy_weight=3.0, benign_edgy_shots=2, group_shrinkage=9.0,
                         stop_patience=2, shrink_tolerance=2).digest() == digest
    # the shipped demo coefficients (SafeGene v2a, made before harmful_framed existed) keep their recorded digest
    for f in sorted(Path(__file__).resolve().parents[1].glob("assets/smollm2/tasks/*/coefficients.json")):
        meta = json.loads(f.read_text())
        assert CalibrationConfig.from_dict(meta["config"]).digest() == meta["config_digest"], f


# ------------------------------------------------------------------------------------------ the SmolLM2 study
def legacy_calibration_params(profile: dict, refusal_loss=None, benign_tokens=None, margin_target=None,
                              benign_contrast=None, init=None, optimizer=None, steps=None) -> dict:
    """The hashed parameters as ``Study.calibrate`` computed them before CalibrationConfig (commit 71d8c2b), with
    its hand-written drops of default values, verbatim."""
    p = dict(profile)
    if steps is not None:
        p["steps"] = int(steps)
    if optimizer is not None:
        p["optimizer"] = optimizer
    if p.get("optimizer", "adam") == "adam":
        p.pop("optimizer", None)
    if init is not None:
        p["init"] = init
    if p.get("init", 1.0) == 1.0:
        p.pop("init", None)
    if benign_contrast is not None:
        p["benign_contrast"] = benign_contrast
    if not p.get("benign_contrast"):
        p.pop("benign_contrast", None)
    if margin_target is not None:
        p["margin_target"] = margin_target
    if not p.get("margin_target"):
        p.pop("margin_target", None)
    if benign_tokens is not None:
        p["benign_tokens"] = benign_tokens
    if not p.get("benign_tokens") or p["benign_tokens"] >= 16:
        p.pop("benign_tokens", None)
    loss = refusal_loss or p.get("refusal_loss", "ce")
    if loss == "ce":
        p.pop("refusal_loss", None)
        p.pop("margin_tokens", None)
    else:
        p["refusal_loss"] = loss
    return p


# the overrides behind every calibration variant of experiments/smollm2/evaluate.calibration_for
VARIANTS = [
    {}, {"refusal_loss": "ce"},
    {"benign_tokens": 4, "margin_target": 0.0}, {"benign_tokens": 4, "margin_target": 2.0},
    {"benign_tokens": 16, "margin_target": 0.0}, {"benign_tokens": 0, "margin_target": 0.0},
    {"benign_contrast": 0.3}, {"benign_contrast": 1.0}, {"benign_contrast": 0.3, "init": 0.0},
    {"benign_contrast": 0.3, "init": 1.0}, {"benign_contrast": 0.3, "init": 0.0, "steps": 40},
    {"benign_contrast": 0.3, "init": 0.0, "optimizer": "adam-shared"}, {"benign_contrast": 0.3, "steps": 40},
    {"benign_contrast": 0.0}, {"optimizer": "adam"},
]


@pytest.mark.parametrize("profile", ["full", "demo", "fast"])
def test_study_stage_hashes_match_the_hand_written_drops(profile):
    from experiments.smollm2.run import Stages, calibration_config, params

    prof = params(profile)["calibrate"]
    # until the library's default procedure took them over, every profile also listed these two
    legacy_prof = {**prof, "refusal_loss": "margin", "margin_tokens": 4}
    inputs = {"A": "align-0123456789ab", "safety": "select-0123456789ab", "task": "task-topic-clean-0123456789ab"}
    for kw in VARIANTS:
        config, new = calibration_config(prof, **kw)
        old = legacy_calibration_params(legacy_prof, **kw)
        shots = {"shots": json_digest([["h"], ["b"], ["t"]])}
        assert Stages.hash("calibrate-topic-clean", {**new, **shots}, inputs) == \
            Stages.hash("calibrate-topic-clean", {**old, **shots}, inputs), (profile, kw, new, old)
        # and the config runs what the old call passed
        assert config.max_target_tokens == 16 and config.steps == int(kw.get("steps") or prof["steps"])
        assert config.init == kw.get("init", 1.0) and config.benign_contrast == kw.get("benign_contrast", 0.0)
        assert config.refusal_loss == kw.get("refusal_loss", legacy_prof["refusal_loss"])
        assert config.margin_tokens == legacy_prof["margin_tokens"]


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_flags_come_from_the_fields():
    import argparse

    from safegene_runtime.cli import build_parser
    from safegene_runtime.cli.calibrate import config_from_args, flag

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["calibrate"]
    by_dest = {a.dest: a for a in sub._actions}
    for f in fields(CalibrationConfig):
        a = by_dest[f.name]
        assert flag(f.name) in a.option_strings and a.default == f.default and f.metadata["help"] in a.help
        if "choices" in f.metadata:
            assert tuple(a.choices) == f.metadata["choices"]
    req = ["--base", "a", "--task", "t", "--safety", "s", "--harmful-shots", "h", "--task-shots", "x", "--out", "o"]
    assert config_from_args(parser.parse_args(["calibrate", *req])) == CalibrationConfig()
    args = parser.parse_args(["calibrate", *req, "--steps", "7", "--init", "1,0", "--benign-tokens", "0",
                              "--max-target-tokens", "0", "--layers", "2,1", "--benign-contrast", "0.3",
                              "--optimizer", "adam-shared"])
    assert config_from_args(args) == CalibrationConfig(steps=7, init=(1.0, 0.0), benign_tokens=None,
                                                       max_target_tokens=None, layers=(1, 2), benign_contrast=0.3,
                                                       optimizer="adam-shared")
    with pytest.raises(ValueError, match="--init: init must be one or more"):
        config_from_args(parser.parse_args(["calibrate", *req, "--init", "9"]))
    assert CalibrationConfig().describe() in " ".join(sub.format_help().split())


def test_the_config_loads_without_torch_and_calibrate_stays_the_function():
    """The CLI reads CalibrationConfig at start-up without torch; the torch-backed API loads on first use, and
    importing its module first does not shadow ``calibrate`` (the function) with a module."""
    code = ("import sys\n"
            "from safegene_runtime.cli import build_parser\n"
            "from safegene_runtime.calibration import CalibrationConfig\n"
            "build_parser(); assert 'torch' not in sys.modules\n"
            "import safegene_runtime.calibration.procedure\n"
            "from safegene_runtime.calibration import calibrate, best_start\n"
            "import safegene_runtime.calibration as c\n"
            "assert callable(calibrate) and calibrate is c.calibrate and calibrate.__module__.endswith('procedure')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------ the server's block
def test_server_calibrate_block_accepts_any_field_and_names_a_bad_key(tmp_path):
    from server.config import ConfigError, parse_task

    def task(**calib):
        return {"name": "alpha", "path": "alpha", "calibrate": {"harmful": "h.jsonl", "task_shots": "t.jsonl",
                                                                  **calib}}

    plain = parse_task(task(), tmp_path, "tasks[0]").calibrate
    assert plain.config == CalibrationConfig()  # the server's defaults are the config's
    spec = parse_task(task(benign_contrast=0.3, init=[1, 0], layers="all", steps=None, max_target_tokens=None,
                           limit=8), tmp_path, "tasks[0]").calibrate
    assert spec.config == CalibrationConfig(benign_contrast=0.3, init=(1.0, 0.0), layers="all",
                                            max_target_tokens=None)
    assert spec.limit == 8 and spec.harmful == tmp_path / "h.jsonl"
    # the admin API stores to_dict(); parsed again it is the same spec
    again = parse_task({"name": "alpha", "path": "alpha", "calibrate": spec.to_dict()}, tmp_path, "tasks[0]")
    assert again.calibrate.config == spec.config and again.calibrate.to_dict() == spec.to_dict()
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(task 'alpha'\)\.calibrate: unknown key\(s\) stepz"):
        parse_task(task(stepz=3), tmp_path, "tasks[0]")
    with pytest.raises(ConfigError, match=r"\.calibrate\.benign_contrast: benign_contrast must be non-negative"):
        parse_task(task(benign_contrast=-1), tmp_path, "tasks[0]")
