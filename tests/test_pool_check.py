"""``experiments.smollm2.pool_check`` looks at a candidate's λ on training data only: every prompt it asks is one
calibration may draw from, never a validation or test prompt (the science rule its numbers rest on)."""

from __future__ import annotations

import pytest

from experiments.smollm2 import pool_check
from safegene_runtime import datasets as ds
from safegene_runtime.edgy_train import draw_edgy_benign


@pytest.mark.parametrize("candidate", ["v2q", "v2u"])
def test_pool_check_asks_training_prompts_only_and_leaves_the_drawn_shots_out_of_the_held_part(candidate):
    sets = pool_check.prompt_sets("sentiment", candidate)
    _, cfg = pool_check.CANDIDATES[candidate]
    drawn = set(draw_edgy_benign(cfg.benign_edgy_shots, 0))
    assert len(sets["pool"]) >= 200 and drawn <= set(sets["pool"])
    assert not drawn & set(sets["pool_not_drawn"]) and len(sets["pool_not_drawn"]) == len(sets["pool"]) - len(drawn)
    assert len(sets["harmful_shots"]) == 16 and len(sets["framed_shots"]) == cfg.harmful_framed == 16
    assert len(sets["other_framed"]) == pool_check.OTHER_FRAMED == len(set(sets["other_framed"]))
    # the other framed prompts are not the shots asked again
    assert not any(h in p for p in sets["other_framed"] for h in sets["harmful_shots"])
    held = [ds.load_named(n) for n, fam in ds.SET_FAMILY.items()
            if fam in (ds.VALIDATION, ds.TEST) and n in ds.NAMED_SETS]
    assert {s.name for s in held} >= {"edgy-benign-val", "harmful-val", "harmful-val-unseen", "harmbench-test"}
    plain = sets["pool"] + sets["harmful_shots"]
    ds.check_no_overlap([plain], held, near=True)
    assert pool_check.prompt_sets("sentiment", candidate) == sets  # the same prompts on every run


def test_pool_check_refuses_bad_scales(capsys):
    with pytest.raises(SystemExit):
        pool_check.main(["v2u", "--scales", "1,x"])
    assert "--scales must be numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pool_check.main(["v2u", "--scales", "-1"])
    assert "--scales must be 0 or more" in capsys.readouterr().err
