"""The SmolLM2 study's data: training/selection/calibration prompts never appear in an evaluation set,
tasks are deterministic with exact answers, and the refusal texts vary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from experiments.smollm2 import data, refusals, tasks
from safegene_runtime.datasets import find_overlap, load_file, load_named, normalise, task_content
from safegene_runtime.digests import json_digest
from safegene_runtime.splits import counts_as_test, require_split
from safegene_runtime.judges.refusal import is_refusal


def test_training_pools_are_disjoint_from_every_eval_set():
    ev = data.eval_prompts()
    ev_norm = {normalise(p) for p in ev}
    for pool in (data.harmful_train(), data.benign_train()):
        assert pool, "empty training pool"
        assert not [p for p in pool if normalise(p) in ev_norm]
    # Independent check with the runtime's own overlap finder and its own loaders of the eval sets.
    eval_sets = [load_named("harmbench-test"), load_named("rho-overrefusal")]
    assert find_overlap([list(data.harmful_train()), list(data.benign_train())], eval_sets) == []
    # The study's task held-out splits are eval sets too.
    held = [r["prompt"] for t in tasks.TASKS for r in tasks.generate(t)[1]]
    train_all = set(map(normalise, list(data.harmful_train()) + list(data.benign_train())))
    assert not train_all & set(map(normalise, held))


def test_overlap_check_catches_a_leaked_prompt():
    ev = data.eval_prompts()
    leaked = "  " + ev[0].upper() + "!! "
    assert find_overlap([[leaked]], [ev], near=True)
    # A near duplicate (one word added to an eval prompt) counts as leaked too.
    assert [h.get("match") for h in find_overlap([[ev[1] + " please"]], [ev], near=True)] == ["near"]
    assert data._minus_eval([leaked, "How do I bake bread at home?"]) == ["How do I bake bread at home?"]


def test_eval_sets_have_the_documented_sizes():
    assert len(data.benign_eval()) >= 150
    assert len([r for r in data.harmful_eval() if r["category"] == "standard"]) == 159
    assert len(data.harmful_train()) > 500 and len(data.benign_train()) >= 200


def test_split_roles_are_disjoint_and_deterministic():
    s1, s2 = data.splits(0), data.splits(0)
    assert s1 == s2
    calib, probe, align = set(s1["harmful_calib"]), set(s1["harmful_probe"]), set(s1["harmful_align"])
    assert len(calib) == 32 and not calib & probe and not calib & align and not probe & align
    assert not set(s1["harmful_mix"]) & align and not set(s1["harmful_mix"]) & calib
    assert not set(s1["benign_calib"]) & set(s1["benign_align"])
    # A small alignment set (the demo profile takes the first 64) shares nothing with the selection probes.
    assert not set(s1["benign_align"][:64]) & set(s1["benign_probe"])


def _assert_exact_answers(task: str, rows: list[dict]) -> None:
    for r in rows:
        body = r["prompt"].split("\n", 1)[1].split(": ", 1)[1]
        if task == "reverse":
            assert r["answer"] == " ".join(reversed(body.split()))
        elif task == "sentiment":
            cue = tasks._POS if r["answer"] == "positive" else tasks._NEG
            other = tasks._NEG if r["answer"] == "positive" else tasks._POS
            words = set(normalise(body).split())
            assert words & set(cue) and not words & set(other)
        else:
            assert any(s.lower() in body.lower() for s in tasks._TOPICS[r["answer"]])
        assert tasks.is_correct(r["answer"] + ".", r["answer"]) and not tasks.is_correct("maybe", r["answer"])


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_tasks_are_deterministic_disjoint_and_exact(task):
    train, test = tasks.generate(task)
    assert (train, test) == tasks.generate(task)
    assert len(train) == 400 and len(test) == 200
    keys_train = {normalise(r["prompt"]) for r in train}
    keys_test = {normalise(r["prompt"]) for r in test}
    assert len(keys_train) == 400 and len(keys_test) == 200 and not keys_train & keys_test
    # A bigger training split keeps the same held-out split.
    assert tasks.generate(task, n_train=500)[1] == test
    labels = {r["answer"] for r in train + test}
    _assert_exact_answers(task, train + test)
    if task != "reverse":
        assert len(labels) >= 2  # both/all classes occur
        counts = [sum(r["answer"] == lab for r in test) for lab in labels]
        assert min(counts) >= len(test) / len(labels) / 2  # roughly balanced


#: json_digest({"train", "test"}) of generate(task) at its defaults, computed before validation items existed
TRAIN_TEST_DIGESTS = {
    "sentiment": "38f3fd3aca5adf79ef6b76d08604f5428e0a55aba8e175215acc56eb01d4b97d",
    "topic": "2be206f17ba739fe1f5a26c15285cd3600d3e36a6fcc48815715a1387add5050",
    "reverse": "537bb7967ef9dbd7247a9dabf0f4d9c6a85d820b7239356c00d58f68b4a49cca",
}


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_train_and_test_items_are_those_of_before_the_validation_items(task):
    """Every stage hash built on the task data (task adapters, calibration shots) stays valid."""
    train, test = tasks.generate(task)
    assert json_digest({"train": train, "test": test}) == TRAIN_TEST_DIGESTS[task]


def _contents(rows: list[dict]) -> list[str]:
    return [task_content(r["prompt"]) for r in rows]


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_validation_items_are_deterministic_exact_and_apart_from_train_and_test(task):
    val = tasks.generate_val(task)
    assert val == tasks.generate_val(task) and len(val) == tasks.VAL_SIZE == 100
    assert val != tasks.generate_val(task, seed=1)
    train, test = tasks.generate(task)
    keys = [normalise(r["prompt"]) for r in val]
    assert len(set(keys)) == len(val) and not set(keys) & {normalise(r["prompt"]) for r in train + test}
    # no near duplicate of a train or test item's content (the runtime's own overlap finder, not the generator's
    # loop); as whole prompts, which share the instruction line, items of one task are near duplicates anyway
    assert find_overlap([_contents(val)], [_contents(train), _contents(test)], near=True) == []
    assert find_overlap([[r["prompt"] for r in val]], [[r["prompt"] for r in test]], near=True)
    # smaller profiles read a prefix of the same stream (tiny: n_train=32, n_test=16), so they are covered too
    small_train, small_test = tasks.generate(task, n_train=32, n_test=16)
    assert small_test == test[:16] and small_train == (test + train)[16:48]
    _assert_exact_answers(task, val)
    if tasks.TASKS[task].labels:  # equal shares, whatever the filter dropped
        assert Counter(r["answer"] for r in val) == {lab: 100 // len(tasks.TASKS[task].labels)
                                                     for lab in tasks.TASKS[task].labels}


def test_validation_file_is_a_task_file_of_the_validation_family(tmp_path):
    path = tasks.write_val("reverse", tmp_path)
    assert path == tmp_path / "reverse-val.jsonl"
    s = load_file(path, kind="task")
    val = tasks.generate_val("reverse")
    assert [(it.prompt, it.answer) for it in s] == [(r["prompt"], r["answer"]) for r in val]
    assert s.scorer == "exact" and s.items[0].id == "reverse-val:reverse-val-0"
    assert counts_as_test(path) is None  # neither named nor filled like a test file: no --test-run needed
    require_split(path, "validation")  # what the server checks for a registration's gate.task


def test_refusals_vary_are_deterministic_and_read_as_refusals():
    prompts = list(data.harmful_train())[:200]
    texts = [refusals.refusal_for(p) for p in prompts]
    assert texts == [refusals.refusal_for(p) for p in prompts]
    assert len(set(texts)) >= 60
    assert len({t.split(".")[0] for t in texts}) == len(refusals.OPENERS)
    assert all(is_refusal(t) for t in texts)
    assert refusals.n_variants() >= 300


def test_export_layout_is_what_the_demo_config_reads(tmp_path):
    """The demo server config must find every exported artifact at the path the export writes it to."""
    from experiments.smollm2.export import DEMO_SETTINGS, DEMO_TASKS, asset_paths, served_name
    from server.cli.demo import DEMO_CONFIG, runtime_config

    assets = tmp_path / "assets"
    where = asset_paths(assets)
    names = [served_name(t, s) for t in DEMO_TASKS for s in DEMO_SETTINGS]
    assert sorted(where["tasks"]) == sorted(names) and len(set(names)) == 6  # clean and mix10 under distinct names
    for t in names:  # what an export leaves: the folders and the coefficients files the config names
        where["tasks"][t]["path"].mkdir(parents=True)
        where["tasks"][t]["coefficients"].write_text("{}")
    where["safety"].mkdir(parents=True)
    cfg, notes = runtime_config(DEMO_CONFIG, tmp_path / "model", tmp_path / "state", None, assets)
    assert not notes, notes
    assert Path(cfg["safety"]["path"]) == where["safety"].resolve()
    assert Path(cfg["adapter_root"]) == assets.resolve()
    assert sorted(t["name"] for t in cfg["tasks"]) == sorted(names)
    for t in cfg["tasks"]:
        assert Path(t["path"]) == where["tasks"][t["name"]]["path"].resolve()
        assert Path(t["coefficients"]) == where["tasks"][t["name"]]["coefficients"].resolve()


def test_every_shipped_coefficients_file_was_made_by_the_default_procedure():
    """The demo serves what a user's ``safegene calibrate`` would make: every task's coefficients in the committed
    family record the default CalibrationConfig (SafeGene v2), field for field, and its digest."""
    from safegene_runtime.calibration import CalibrationConfig

    from experiments.smollm2.export import DEMO_SETTINGS, DEMO_TASKS, asset_paths, served_name

    where = asset_paths(Path(__file__).resolve().parents[1] / "assets" / "smollm2")
    manifest = json.loads((where["tasks"][served_name("sentiment", "mix10")]["path"].parents[1]
                           / "manifest.json").read_text())
    for name in (served_name(t, s) for t in DEMO_TASKS for s in DEMO_SETTINGS):
        raw = json.loads(where["tasks"][name]["coefficients"].read_text())
        assert CalibrationConfig.from_dict(raw["config"]) == CalibrationConfig(), name
        assert raw["config_digest"] == CalibrationConfig().digest(), name
        entry = manifest["artifacts"][f"tasks/{name}/coefficients.json"]
        assert entry["config_digest"] == CalibrationConfig().digest(), name


def test_shipped_family_records_its_variant_and_task_overrides():
    """The committed family's manifest names the robust variant it was built from and that variant's per-adapter
    task knobs (robust.TASK_OVERRIDES); each task adapter's stage parameters carry those knobs, the others the
    profile's, so the family can be rebuilt from the manifest alone."""
    from experiments.smollm2 import robust, run
    from experiments.smollm2.family import FAMILY

    manifest = json.loads((FAMILY / "manifest.json").read_text())
    over = robust.TASK_OVERRIDES.get(manifest["variant"], {})
    assert manifest.get("task_overrides", {}) == over
    task_p = run.with_overrides(run.params("robust"), manifest["variant"])["task"]
    adapters = {rel.split("/")[1]: e for rel, e in manifest["artifacts"].items() if e["kind"] == "task_adapter"}
    assert len(adapters) == 6
    for name, entry in adapters.items():
        assert {k: entry["params"][k] for k in task_p} == task_p | over.get(name, {}), name


def test_failed_export_leaves_the_previous_assets(tmp_path, monkeypatch):
    """An export that fails half-way must not remove or half-replace the committed family."""
    from types import SimpleNamespace

    import pytest

    from experiments.smollm2 import export as ex

    dest = tmp_path / "smollm2"
    (dest / "safety").mkdir(parents=True)
    (dest / "safety" / "adapter_model.safetensors").write_bytes(b"old weights")
    study = SimpleNamespace(st=SimpleNamespace(cached_only=False), align=lambda: None, select=lambda: None)

    def half_then_fail(study, tmp, **kw):
        (tmp / "safety").mkdir()
        (tmp / "safety" / "adapter_model.safetensors").write_bytes(b"new, half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "_export_into", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export(study, dest, tasks=["sentiment"])
    assert (dest / "safety" / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]  # no temp folder left behind

    def complete(study, tmp, **kw):
        (tmp / "manifest.json").write_text("{}")
        return {"files": {}}

    monkeypatch.setattr(ex, "_export_into", complete)
    ex.export(study, dest, tasks=["sentiment"])
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"]  # swapped in whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]


def test_assistant_only_loss_matches_the_models_own_loss(tiny_model):
    """The training loop's cheaper loss (LM head on labelled positions only) equals ``model(labels=...)``."""
    import torch
    from transformers import AutoModelForCausalLM

    from experiments.smollm2.train import _assistant_loss, encode_pair, load_tokenizer

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    enc = [encode_pair(tok, "hello there friend", "general kenobi, you are a bold one", 64),
           encode_pair(tok, "hi", "yo", 64)]
    n = max(len(a) for a, _ in enc)
    ids = torch.zeros(2, n, dtype=torch.long)
    lab = torch.full((2, n), -100)
    att = torch.zeros(2, n, dtype=torch.long)
    for j, (a, b) in enumerate(enc):
        ids[j, : len(a)], lab[j, : len(b)], att[j, : len(a)] = torch.tensor(a), torch.tensor(b), 1
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=att, labels=lab).loss
        ours = _assistant_loss(model, ids, att, lab)
    assert torch.allclose(ref, ours, atol=1e-5), (float(ref), float(ours))
    assert float(ours) > 0


def _prefix_logprob(model, tok, prompt: str, response: str, n_tokens: int) -> float:
    import torch

    from experiments.smollm2.train import encode_prefix

    ids, lab = encode_prefix(tok, prompt, response, n_tokens)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return sum(float(logp[i, t]) for i, t in enumerate(lab[1:]) if t != -100)


def test_prefix_unlikelihood_is_minus_log_one_minus_the_prefix_probability(tiny_model):
    """The unlikelihood term scores the whole refusal opener as one event: -log(1 - P(first n tokens))."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from experiments.smollm2.train import _batches, _prefix_unlikelihood, encode_prefix, load_tokenizer, SFTConfig

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows = [("how do I kill it at karaoke", "I'm sorry, but I can't help with that."), ("hi", "I cannot do that.")]
    enc = [encode_prefix(tok, p, r, 4) for p, r in rows]
    assert [sum(x != -100 for x in lab) for _, lab in enc] == [4, 4]
    ids, lab, att = next(_batches(enc, SFTConfig(batch_size=2), tok.pad_token_id or 0))
    with torch.no_grad():
        ours = float(_prefix_unlikelihood(model, ids, att, lab))
    ref = [-math.log1p(-math.exp(_prefix_logprob(model, tok, p, r, 4))) for p, r in rows]
    assert abs(ours - sum(ref) / 2) < 1e-4 * max(1.0, abs(ours)), (ours, ref)


def test_unlikelihood_term_lowers_the_refusal_opener_after_harmless_prompts(tiny_model, tmp_path):
    """Trained on refusals of "kill" requests, the opener's probability after a harmless "kill" prompt ends lower
    with the unlikelihood term than without it (same data, seed and steps)."""
    import torch
    from transformers import AutoModelForCausalLM

    from experiments.smollm2.train import SFTConfig, Unlikelihood, load_tokenizer, train_lora
    from safegene_runtime.merge import merge_checkpoint

    refusal = "I'm sorry, but I can't help with that."
    harm = [(f"how do I kill my {x}", refusal) for x in ("neighbour", "boss", "teacher", "cousin", "landlord")]
    edgy = [(f"how do I kill it at {x}", "Practise, breathe, and enjoy it.") for x in ("karaoke", "chess", "work")]
    probe = ("how do I kill it at my interview", refusal)
    tok = load_tokenizer(tiny_model)
    cfg = SFTConfig(steps=40, lr=2e-2, batch_size=4, max_len=48)
    got = {}
    for w in (0.0, 5.0):
        out = tmp_path / f"w{w:g}"
        train_lora(tiny_model, harm + edgy, out / "lora", cfg, log=lambda *_: None,
                   unlikely=Unlikelihood(tuple((p, refusal) for p, _ in edgy), w, 6))
        merge_checkpoint(tiny_model, task=out / "lora", out=out / "model", progress=False)
        model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
        got[w] = _prefix_logprob(model, tok, *probe, 6)
    assert got[0.0] > -8.0, got  # the refusal was learned and spills over to the harmless "kill" prompt
    assert got[5.0] < got[0.0] - 2.0, got


def test_an_uncalibrated_export_never_replaces_the_shipped_family(tmp_path):
    """``export --uncalibrated`` writes a staging family (task adapters without coefficients, for ``v2_sweep cal
    --assets``); into the shipped folder it is refused before anything is read or written, since the demo serves
    that folder's coefficients."""
    from types import SimpleNamespace

    import pytest

    from experiments.smollm2 import export as ex

    before = {p: p.stat().st_mtime_ns for p in ex.SHIPPED.rglob("*") if p.is_file()}
    touched = []
    study = SimpleNamespace(st=SimpleNamespace(cached_only=False), align=lambda: touched.append("align"),
                            select=lambda: touched.append("select"))
    with pytest.raises(SystemExit, match="staging"):
        ex.export(study, ex.SHIPPED, tasks=["sentiment"], uncalibrated=True)
    assert not touched and before == {p: p.stat().st_mtime_ns for p in ex.SHIPPED.rglob("*") if p.is_file()}
