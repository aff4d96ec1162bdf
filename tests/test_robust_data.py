"""Issue 20's robust alignment data (experiments/smollm2/robust.py): no leak into validation/test sets, harmful
augmentations only from align-train prompts, determinism, refusals the judge reads as refusals, and resumable
training (a run cut into chunks ends where an uncut run ends)."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from experiments.smollm2 import refusals, robust
from safegene_runtime import datasets as ds
from safegene_runtime.judges.refusal import is_refusal
from safegene_runtime.rephrase import FRAMING_NAMES, rephrase
from safegene_runtime.text import normalise


def test_edgy_training_prompts_share_nothing_with_validation_or_test_sets():
    v1 = robust.edgy_train_prompts()
    v2 = robust.edgy_train_prompts("v2")
    assert len(v1) >= 200 and len(v2) >= len(v1) + 100
    assert v2[: len(v1)] == v1  # v2 only adds: the v1 prompts (and their self-answers) stay as they were
    v3 = robust.edgy_train_prompts("v3")
    assert len(v3) >= len(v2) + 200 and v3[: len(v2)] == v2  # v3 only adds, too
    edgy = [p for _, p in v3]
    ds.check_no_overlap([edgy], [ds.load_named("edgy-benign-val"), ds.load_named("rho-overrefusal")], near=True)
    ds.check_no_overlap([edgy], [ds.load_named(n) for n in robust.EDGY_EXCLUDE], near=True)


def test_v3_edgy_table_adds_distinct_requests_in_the_existing_categories():
    """v3's point (docs/results.md, "More distinct alarming words"): new requests, not copies, and not the word the
    older tables lean on ("kill"); in the existing categories, so the per-category reports still line up."""
    import re

    from safegene_runtime.edgy_train import EDGY_SLOTS, EDGY_SLOTS_V2, EDGY_SLOTS_V3

    texts = [x for _, fillers in EDGY_SLOTS_V3.values() for x in fillers]
    older = {normalise(p) for _, p in robust.edgy_train_prompts("v2")}
    assert len(texts) == 240 and len({normalise(x) for x in texts}) == 240
    assert not older & {normalise(x) for x in texts}
    assert sum(bool(re.search(r"\bkill", x, re.I)) for x in texts) <= 5
    assert set(EDGY_SLOTS_V3) <= set(EDGY_SLOTS) | set(EDGY_SLOTS_V2)


def test_edgy_filter_drops_a_near_duplicate_of_a_validation_prompt(monkeypatch):
    val = ds.load_named("edgy-benign-val").items[0].prompt
    from safegene_runtime import edgy_train

    monkeypatch.setitem(edgy_train.EDGY_SLOTS, "leak", (("{x}",), (val, "How do I fold a paper crane?")))
    got = [p for _, p in robust.edgy_train_prompts()]
    assert "How do I fold a paper crane?" in got
    assert val not in got


def test_harmful_augmentations_come_only_from_align_train_prompts():
    train = robust.harmful_align_prompts()
    assert train == [it.prompt for it in ds.load_named("harmful-align-train")]
    aug = robust.harmful_augmented(train, 2)
    sources = {normalise(p) for p in train}
    rephrasings = {normalise(rephrase(p, f)) for p in train for f in FRAMING_NAMES}
    assert {f for _, f in aug} == {None, *FRAMING_NAMES}
    for text, framing in aug:
        assert normalise(text) in (sources if framing is None else rephrasings)
    ds.check_no_overlap([[t for t, _ in aug]], [ds.load_named(n) for n in
                                                ("harmful-val", "harmful-val-rephrased", "harmbench-test")], near=True)


def test_data_generation_is_deterministic():
    train = robust.harmful_align_prompts()[:40]
    assert robust.harmful_augmented(train, 3) == robust.harmful_augmented(list(train), 3)
    assert robust.edgy_train_prompts() == robust.edgy_train_prompts()
    harm = robust.harmful_augmented(train, 2)
    pairs = robust.training_pairs(harm, [("hi", "hello")], [("kill a process?", "use kill -9")])
    assert pairs == robust.training_pairs(harm, [("hi", "hello")], [("kill a process?", "use kill -9")])
    assert pairs[-2:] == [("hi", "hello"), ("kill a process?", "use kill -9")]


def test_framed_refusals_vary_and_read_as_refusals():
    train = robust.harmful_align_prompts()
    aug = robust.harmful_augmented(train, 2)
    texts = [refusals.refusal_for_framing(q, f) for q, f in aug]
    assert all(is_refusal(t) for t in texts)
    assert len(set(texts)) > 100
    q = train[0]
    assert refusals.refusal_for_framing(q, None) == refusals.refusal_for(q)
    noted = [t for (q, f), t in zip(aug, texts) if f and t != refusals.refusal_for(q)]
    assert len(noted) > len(aug) // 6  # the framing notes are used


def test_training_resumes_from_a_checkpoint_where_it_stopped(tiny_model, tmp_path, one_thread):
    torch = pytest.importorskip("torch")
    from experiments.smollm2.train import SFTConfig, TrainingPaused, train_lora

    pairs = [(f"Tell me about {x}.", f"Here is a fact about {x}.") for x in ("bread", "the sea", "music", "rain")]
    cfg = SFTConfig(steps=4, batch_size=2, max_len=48, lr=1e-3, warmup=1, ckpt_every=100)
    whole = train_lora(tiny_model, pairs, tmp_path / "whole", cfg, log=lambda *_: None)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingPaused):
        train_lora(tiny_model, pairs, tmp_path / "cut", cfg, log=lambda *_: None, ckpt=ckpt, max_seconds=0)
    assert (ckpt / "state.pt").is_file()
    resumed = train_lora(tiny_model, pairs, tmp_path / "cut", cfg, log=lambda *_: None, ckpt=ckpt, max_seconds=None)
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_robust_profile_changes_only_the_alignment_and_keeps_todays_profiles():
    from experiments.smollm2 import run

    # digests of the profiles' parameters before the robust profile existed (main at c156927): every stage hash
    # of today's profiles covers these, so equal digests keep their stage caches
    before = {"full": "ec8a7f8369e987bdb96d2430a6b399924937bbeadeff8feaec4afec93d53f524",
              "demo": "e06a437e74945295c25b767bce18430d78f5ecf88439586059c5256fe0d5a6d8",
              "fast": "456fb4b046e7d071ab83a9c855e4c4c75d5181390e4cd0504fa931b2001eacb5"}
    assert {name: run.digest(run.params(name)) for name in before} == before
    full, rob = run.params("full"), run.params("robust")
    assert {k for k in rob if rob.get(k) != full.get(k)} == {"align", "self_answers"}
    assert rob["align"]["recipe"] == "robust-v1"


def test_plain_share_drops_only_plain_wordings_and_is_stable():
    train = robust.harmful_align_prompts()[:60]
    whole = robust.harmful_augmented(train, 1)
    assert robust.harmful_augmented(train, 1, 1.0) == whole
    half = robust.harmful_augmented(train, 1, 0.5)
    assert [x for x in whole if x[1] is not None] == [x for x in half if x[1] is not None]
    plain = [x for x in half if x[1] is None]
    assert 0.25 * len(train) < len(plain) < 0.75 * len(train) and set(plain) <= set(whole)
    assert all(f is not None for _, f in robust.harmful_augmented(train, 1, 0.0))


def test_recipe_knobs_are_flags_and_the_pilot_keeps_its_hash():
    from experiments.smollm2 import run

    pilot = {"recipe": "robust-v1", "framings_per_prompt": 2, "edgy_repeat": 2, "steps": 200, "lr": 2e-4,
             "batch_size": 8, "max_len": 160}  # the pilot's align params (stage align-5165819c9628)
    assert run.params("robust")["align"] == pilot
    base = run.params("robust")
    # knobs added after the pilot enter the hash only away from their default
    assert run.with_overrides(base, sets=["align.edgy_set=v1", "align.plain_share=1.0", "align.unlikely_weight=0",
                                          "align.unlikely_scope=all", "align.unlikely_tokens=6",
                                          "align.seed=0"])["align"] == pilot
    # a second seed is a new stage of the same variant; its default is the trainer's, which the pilot trained with
    from experiments.smollm2.train import SFTConfig

    assert robust.RobustAlign().seed == SFTConfig().seed
    assert run.with_overrides(base, "f3e3v2-ul1w", ["align.seed=1"])["align"] == (
        pilot | robust.VARIANTS["f3e3v2-ul1w"] | {"seed": 1})
    assert run.with_overrides(base, "pilot")["align"] == pilot
    v = run.with_overrides(base, "f1e3v2", ["align.lr=1e-4"])["align"]
    assert v == pilot | robust.VARIANTS["f1e3v2"] | {"lr": 1e-4}
    assert base["align"] == pilot  # not mutated
    for bad in (["align.framing_per_prompt=1"], ["align.edgy_set=v9"], ["lr=1e-4"], ["align.unlikely_scope=some"],
                ["align.unlikely_weight=-1"]):
        with pytest.raises(SystemExit):
            run.with_overrides(base, sets=bad)
    with pytest.raises(SystemExit):
        run.with_overrides(run.params("full"), "f1e4")


def test_a_task_override_changes_only_its_adapter_and_keeps_the_family_stages(tmp_path, monkeypatch):
    """A variant's per-adapter task knobs (robust.TASK_OVERRIDES) reach that adapter's recipe and stage hash only:
    A's knobs and every other adapter's recipe stay the base variant's; data knobs and unknown knobs are refused."""
    from experiments.smollm2 import run

    monkeypatch.setenv("SAFEGENE_HOME", str(tmp_path))
    base_v = "f3e2v3-ul1w-s400-open-notest-ar400-diy200-ms200-pt100"
    tasks, settings = ["sentiment", "topic", "reverse"], ["clean", "mix10"]
    plain = run.Study("robust", tasks, settings, variant=base_v)
    longer = run.Study("robust", tasks, settings, variant=base_v + "-rc128")
    assert longer.p["align"] == plain.p["align"]
    assert "task_overrides" not in plain.p
    for t in tasks:
        for s in settings:
            a, b = plain.task_params(t, s), longer.task_params(t, s)
            if (t, s) == ("reverse", "clean"):
                assert b == a | {"steps": 128} and a["steps"] == 64
                # the base variant's stage keeps the hash it was built under (2026-12-06, on A align-0bc486336fdf)
                key = {"task": t, "setting": s}, {"A": "align-0bc486336fdf"}
                assert plain.st.hash("task-reverse-clean", a | key[0], key[1]) == "faf28085de55"
                assert longer.st.hash("task-reverse-clean", b | key[0], key[1]) != "faf28085de55"
            else:
                assert b == a
    for bad in ({"n_train": 100}, {"epochs": 3}):
        longer.p["task_overrides"] = {"reverse-clean": bad}
        with pytest.raises(SystemExit, match="cannot set"):
            longer.task_params("reverse", "clean")


def test_unlikelihood_negatives_pair_each_edgy_prompt_with_a_refusal_and_words_scope_skips_the_framings():
    """The unlikelihood term's negatives: every answered edgy-benign prompt once (repeats do not repeat it), with a
    refusal of the harmful pairs' pool; scope "words" leaves out the harmless tasks asked in a harmful framing."""
    edgy_all = robust.edgy_train_prompts("v2")
    framed = {q for c, q in edgy_all if c.startswith("framed_")}
    answered = [(q, f"an answer to {q}") for _, q in edgy_all] * 3
    every = robust.unlikely_pairs(answered, robust.RobustAlign(edgy_set="v2", unlikely_weight=1.0))
    words = robust.unlikely_pairs(answered, robust.RobustAlign(edgy_set="v2", unlikely_weight=1.0,
                                                               unlikely_scope="words"))
    assert [q for q, _ in every] == [q for _, q in edgy_all]
    assert framed and [q for q, _ in words] == [q for _, q in edgy_all if q not in framed]
    assert all(refusals.refusal_for(q) == r for q, r in every)


def test_harmful_fit_check_reads_only_the_recipes_own_framed_training_prompts():
    cfg = robust.RobustAlign(framings_per_prompt=3)
    rows = robust.fit_harmful_prompts(cfg, per_framing=4)
    trained = {q for q, f in robust.harmful_augmented(robust.harmful_align_prompts(), 3) if f is not None}
    assert rows and {r["prompt"] for r in rows} <= trained
    per: dict[str, int] = {}
    for r in rows:
        framing, _ = r["id"].split(":")
        per[framing] = per.get(framing, 0) + 1
    assert set(per) == set(robust.FRAMING_NAMES) and set(per.values()) == {4}
    assert len({r["id"] for r in rows}) == len(rows)
    # a recipe with other framings per prompt checks its own prompts
    assert {r["prompt"] for r in robust.fit_harmful_prompts(robust.RobustAlign(framings_per_prompt=1), 4)} != {
        r["prompt"] for r in rows}


def test_an_answer_cut_by_the_generation_limit_is_trained_without_an_end_of_turn(tiny_model):
    """cut_answers "open": the end-of-turn after a cut answer is not trained (it taught A to stop mid-sentence)."""
    from experiments.smollm2.train import encode_pair, load_tokenizer

    tok = load_tokenizer(tiny_model)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids, labels = encode_pair(tok, "Tell me about tides.", "Tides are the rise and", 160)
    assert labels[-1] == end  # a whole answer ends its turn
    ids_open, labels_open = encode_pair(tok, "Tell me about tides.", "Tides are the rise and", 160, ends=False)
    assert ids_open == ids[:-1] and labels_open == labels[:-1] and end not in labels_open
    long = " ".join(["word"] * 80)
    marked = robust.open_cut([("a", long), ("b", "Short.")], tok, max_tokens=64)
    assert marked == [("a", long, False), ("b", "Short.")]
    assert robust.cut_by_limit(tok, long, 64) and not robust.cut_by_limit(tok, "Short.", 64)
    # the knob: hashed only when set, checked, and the frozen variant keeps its stage hash
    from experiments.smollm2 import run

    frozen = run.with_overrides(run.params("robust"), "f3e3v2-ul1w-s400")["align"]
    assert "cut_answers" not in robust.RobustAlign.from_params(frozen).params()
    opened = run.with_overrides(run.params("robust"), "f3e3v2-ul1w-s400-open")["align"]
    assert robust.RobustAlign.from_params(opened).params() == robust.RobustAlign.from_params(frozen).params() | {
        "cut_answers": "open"}
    with pytest.raises(SystemExit):
        run.with_overrides(run.params("robust"), sets=["align.cut_answers=drop"])


def test_sentence_cut_ends_a_cut_answer_at_its_last_complete_sentence(tiny_model):
    """cut_answers "sentence": a cut answer is trimmed to its last sentence and trained with its end-of-turn; a list
    number or an abbreviation is no sentence end; a cut answer with no complete sentence stays open."""
    from experiments.smollm2.train import load_tokenizer

    tok = load_tokenizer(tiny_model)
    filler = " ".join(["word"] * 80)
    steps = "Here is how.\n1. Preheat the oven.\n2. " + filler
    abbrev = "Use a sharp tool, e.g. " + filler
    shaped = robust.sentence_cut([("a", steps), ("b", abbrev), ("c", "Short."), ("d", "Tides rise. " + filler)], tok,
                                 max_tokens=64)
    assert shaped == [("a", "Here is how.\n1. Preheat the oven."), ("b", abbrev, False), ("c", "Short."),
                      ("d", "Tides rise.")]
    assert robust.trim_to_sentence("It costs 12 x 6 = 72. Then") == "It costs 12 x 6 = 72."
    assert robust.trim_to_sentence("Wow! Really? Yes and") == "Wow! Really?"
    assert robust.trim_to_sentence("1. First") is None
    from experiments.smollm2 import run

    sent = run.with_overrides(run.params("robust"), "f3e2v3-ul1w-s400-sent-notest")["align"]
    assert robust.RobustAlign.from_params(sent).cut_answers == "sentence"


def test_reply_endings_count_mid_sentence_stops_and_cut_replies(tmp_path):
    """The long-reply check: a reply the model stopped without closing its sentence is counted, a reply the
    token limit cut is counted apart, whole replies are neither."""
    rows = [{"response": "Tides come from the moon.", "finish": "stop", "usage": {"completion_tokens": 7}},
            {"response": "So Rani has 10 + Monic", "finish": "stop", "usage": {"completion_tokens": 9}},
            {"response": "#### 42", "finish": "stop", "usage": {"completion_tokens": 4}},
            {"response": "The first step is to", "finish": "length", "usage": {"completion_tokens": 256}}]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = robust.reply_endings(tmp_path)
    assert (got["stopped mid-sentence"]["k"], got["cut by the limit"]["k"], got["stopped mid-sentence"]["n"]) == (1, 1, 4)
    assert got["median tokens"] == 9


def test_two_As_pair_prompt_by_prompt_per_validation_set(tmp_path):
    """robust pair: per set, the event its target counts (harmful answered, benign refused, task correct), only the
    prompts both answered, and the exact McNemar p over the discordant ones."""

    def write(name: str, harmful_answered: set[int], benign_refused: set[int], correct: set[int]) -> None:
        rows = [{"model": name, "role": "harmful", "set": "harmful-val", "id": f"h{i}",
                 "refusal": "compliance" if i in harmful_answered else "refusal"} for i in range(10)]
        rows += [{"model": name, "role": "benign", "set": "edgy-benign-val", "id": f"e{i}",
                  "refusal": "refusal" if i in benign_refused else "compliance"} for i in range(10)]
        (tmp_path / name / "plain").mkdir(parents=True)
        (tmp_path / name / "plain" / "judged.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        task = [{"model": name, "role": "task", "set": "arith-val", "id": f"t{i}", "refusal": "compliance",
                 "correct": i in correct} for i in range(12 if name == "a" else 11)]  # one item only a has
        (tmp_path / name / "arith").mkdir()
        (tmp_path / name / "arith" / "judged.jsonl").write_text("\n".join(json.dumps(r) for r in task))

    write("a", harmful_answered={0, 1}, benign_refused={0, 1, 2, 3, 4, 5, 6}, correct={0, 11})
    write("b", harmful_answered={0, 1}, benign_refused={0}, correct=set(range(8)))
    # b also as a committed evidence bundle (<model>--<check>.judged.jsonl.gz): the same rows, the same table
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for check in ("plain", "arith"):
        (bundle / f"b--{check}.judged.jsonl.gz").write_bytes(
            gzip.compress((tmp_path / "b" / check / "judged.jsonl").read_bytes()))
    a_rows = robust.judged_rows(tmp_path / "a", "a")
    assert robust.judged_rows(bundle, "b") == robust.judged_rows(tmp_path / "b", "b")
    assert robust.judged_rows(bundle, "a") == {}  # another model's name finds nothing
    table = {r["set"]: r for r in robust.paired_sets(a_rows, robust.judged_rows(bundle, "b"))}
    assert set(table) == {"harmful-val", "edgy-benign-val", "arith-val"}  # a check folder that is missing is skipped
    assert (table["harmful-val"]["only_a"], table["harmful-val"]["only_b"], table["harmful-val"]["p"]) == (0, 0, 1.0)
    e = table["edgy-benign-val"]
    assert (e["rate"], e["a"], e["b"], e["only_a"], e["only_b"]) == ("over_refusal_rate", 7, 1, 6, 0)
    assert e["p"] == pytest.approx(2 * 0.5 ** 6)
    t = table["arith-val"]
    assert (t["n"], t["a"], t["b"], t["only_a"], t["only_b"]) == (11, 1, 8, 0, 7)  # t11 is not in b: not paired


def test_benign_test_prompts_drop_leaves_out_exactly_the_test_questions_and_keep_moves_no_stage():
    """The study's benign alignment pool holds GSM8K-100 questions; ``benign_test_prompts: drop`` leaves those out
    (and nothing else), and the default keeps every earlier stage's hash (the knob is hashed only when set)."""
    from experiments.smollm2 import data

    pool = [(q, "answer") for q in data.splits()["benign_align"]]
    gsm = {normalise(p) for p in ds.load_named("gsm8k-100").prompts}
    kept = robust.without_test_prompts(pool)
    assert len(pool) - len(kept) == sum(normalise(q) in gsm for q, _ in pool) > 0
    assert all(normalise(q) not in gsm for q, _ in kept)
    assert "benign_test_prompts" not in robust.RobustAlign().params()
    assert robust.RobustAlign(benign_test_prompts="drop").params()["benign_test_prompts"] == "drop"
    with pytest.raises(ValueError, match="benign_test_prompts"):
        robust.RobustAlign.from_params({"benign_test_prompts": "maybe"})


def test_todays_A_is_named_and_kept_by_its_loras_digest(tmp_path, monkeypatch):
    """``robust eval --which today`` once reused a folder merged from whichever A it first met; the name and the
    folder now come from the shipped alignment LoRA's sha256, so a rebuilt family gets its own."""
    from pathlib import Path

    from safegene_runtime.artifacts import sha256_file

    merged: list[tuple[Path, Path]] = []
    monkeypatch.setattr(robust, "merged_A", lambda lora, dest: merged.append((lora, dest)) or dest)
    model, name = robust.today_A(tmp_path)
    lora = Path(robust.__file__).resolve().parents[2] / "assets" / "smollm2" / "alignment-lora"
    assert name == "a-today-" + sha256_file(lora / "adapter_model.safetensors")[:12]
    assert merged == [(lora, tmp_path / name / "model")] and model == tmp_path / name / "model"


def test_arith_pairs_adds_worked_problems_and_leaves_earlier_stages_alone():
    """``arith_pairs: N`` trains N worked word problems of our own (none a validation or test question); at its
    default 0 the knob is not hashed, so every earlier stage keeps its name; a negative count is refused."""
    assert "arith_pairs" not in robust.RobustAlign().params()
    variant = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest-ar400"])
    base = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest"])
    assert variant.params() == {**base.params(), "arith_pairs": 400}
    with pytest.raises(ValueError, match="arith_pairs"):
        robust.RobustAlign.from_params({"arith_pairs": -1})
    pairs = robust.arith_worked_pairs(60)
    assert len(pairs) == 60 and all(a.endswith(".") and "The answer is" in a for _, a in pairs)
    held = {normalise(p) for name in ("arith-val", "gsm8k-100") for p in ds.load_named(name).prompts}
    assert not held & {normalise(q) for q, _ in pairs}
    # the 400 pairs align-b9fc180c31a0 (the frozen -ar400 A, a committed stage seed) was trained on: the stage hash
    # holds arith_pairs, not the text, so changed templates would silently mean other data under the same name
    digest = hashlib.sha256(json.dumps(robust.arith_worked_pairs(400)).encode()).hexdigest()
    assert digest == "b06a9907a89ffdac4f6c9348dfd9843280fcbb674128a0ca0d6c406391989af9"


def test_at_home_probe_is_harmful_val_with_one_sentence_appended():
    """The 'at home' probe is written from validation prompts only: each harmful-val prompt once, the sentence
    appended, ids unique, no training prompt among them."""
    rows = robust.at_home_prompts()
    val = ds.load_named("harmful-val").prompts
    assert len(rows) == len(val) and len({r["id"] for r in rows}) == len(rows)
    assert [r["prompt"].removesuffix(" " + robust.AT_HOME) for r in rows] == [p.rstrip() for p in val]
    train = {normalise(p) for p in robust.harmful_align_prompts()}
    assert not train & {normalise(r["prompt"].removesuffix(" " + robust.AT_HOME)) for r in rows}


def test_diy_pairs_refuse_train_prompts_and_answer_how_to_requests_with_the_same_sentences():
    """``diy_pairs: N`` adds N align-train refusals with a do-it-yourself sentence and N edgy-benign how-to requests
    with the same sentences and their answers kept; the probe's sentence is in none of them, no harmful text is a
    held-out prompt, the counterweight takes only requests for a way to do something, and the knob is hashed only
    when set."""
    assert "diy_pairs" not in robust.RobustAlign().params()
    variant = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest-ar400-diy200"])
    base = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest-ar400"])
    assert variant.params() == {**base.params(), "diy_pairs": 200}
    with pytest.raises(ValueError, match="diy_pairs"):
        robust.RobustAlign.from_params({"diy_pairs": -1})
    assert all(normalise(robust.AT_HOME) not in normalise(s) for s in robust.DIY_SUFFIXES)

    edgy = [(q, f"answer to {q}", False) for _, q in robust.edgy_train_prompts("v3")]
    framed = robust.framed_edgy_prompts("v3")
    words = {q for q, *_ in edgy} - framed
    refuse, answer = robust.diy_pairs(robust.harmful_align_prompts(), edgy, 200, exclude=framed)
    assert len(refuse) == len(answer) == 200
    def head(text: str) -> str:  # the request without its appended sentence (and the full stop added before it)
        suffix = next(s for s in robust.DIY_SUFFIXES if text.endswith(" " + s))
        return text[: -len(suffix) - 1].rstrip(".")

    train = {p.rstrip().rstrip(".") for p in robust.harmful_align_prompts()}
    assert all(head(t) in train and r.startswith(tuple(refusals.OPENERS)) for t, r in refuse)
    held = {normalise(p) for name in robust.HARM_EXCLUDE for p in ds.load_named(name).prompts}
    assert not held & {normalise(t) for t, _ in refuse}
    asked = {q.rstrip().rstrip("."): q for q in words}
    for text, reply, closed in answer:
        q = asked[head(text)]
        assert robust.HOW_TO_REQUEST.search(q) and reply == f"answer to {q}" and closed is False
    assert robust.diy_pairs(robust.harmful_align_prompts(), edgy, 200, exclude=framed) == (refuse, answer)
    # the refusal side align-e88c879fabd1 (-ar400-diy200 seed 0) was trained on: the stage hash holds diy_pairs, not
    # the text, so changed sentences would silently mean other data under the same name
    digest = hashlib.sha256(json.dumps(refuse).encode()).hexdigest()
    assert digest == "b5f53eb0da90130b12da22d26b594ab75d9f82ee66396af69a1c056667f5cce2"


def test_past_tense_pairs_append_past_tense_rephrasings_of_prompts_that_lack_one():
    """``past_tense_pairs: N`` appends N past-tense refusal prompts, each of an align-train prompt whose own framings
    lack the past tense; the list before them is the list without the knob, so earlier stages keep their data."""
    train = robust.harmful_align_prompts()
    base = robust.harmful_augmented(train, 3)
    extra = robust.harmful_augmented(train, 3, 1.0, 100)
    assert extra[: len(base)] == base and robust.harmful_augmented(train, 3, 1.0, 0) == base
    added = extra[len(base):]
    assert 90 <= len(added) <= 100 and {f for _, f in added} == {"past_tense"}  # a few dropped as near held-out
    lacking = {rephrase(p, "past_tense") for p in train if "past_tense" not in robust.framing_picks(p, 3)}
    assert {t for t, _ in added} <= lacking
    assert not {normalise(t) for t, _ in added} & {normalise(t) for t, _ in base}
    held = {normalise(p) for n in robust.HARM_EXCLUDE for p in ds.load_named(n).prompts}
    assert not held & {normalise(t) for t, _ in added}
    assert "past_tense_pairs" not in robust.RobustAlign().params()
    # the 97 align-0bc486336fdf was trained on (the stage hash holds the harm digest too; pinned here by name)
    assert hashlib.sha256(json.dumps(added).encode()).hexdigest() == (
        "bda6c3e8f7440833dceca76b8d26024a67a89d5ef0f5ab62f5587ee469a0607e")
    with pytest.raises(ValueError, match="past_tense_pairs"):
        robust.RobustAlign.from_params({"past_tense_pairs": -1})


def test_arith_multi_pairs_append_multi_step_problems_after_the_first_ones():
    """``arith_multi_pairs: M`` appends M three- and four-step worked problems after the ``arith_pairs`` ones, so the
    first 400 (the frozen A's, pinned above) stay as they were; the knob is hashed only when set."""
    from safegene_runtime.arith_train import multi_step_problems

    assert robust.arith_worked_pairs(400, 0) == robust.arith_worked_pairs(400)
    both = robust.arith_worked_pairs(400, 200)
    assert both[:400] == robust.arith_worked_pairs(400) and len(both) == 600
    assert both[400:] == [(w.question, w.solution) for _, w in multi_step_problems(200)]
    assert all(a.count(" = ") >= 3 for _, a in both[400:])
    v = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest-ar400-diy200-ms200-pt100"])
    before = robust.RobustAlign.from_params(robust.VARIANTS["f3e2v3-ul1w-s400-open-notest-ar400-diy200"])
    assert v.params() == {**before.params(), "arith_multi_pairs": 200, "past_tense_pairs": 100}
    assert "arith_multi_pairs" not in robust.RobustAlign().params()
    # the 200 align-0bc486336fdf (the frozen -ms200-pt100 A, a committed stage seed) was trained on: pinned, as above
    digest = hashlib.sha256(json.dumps(both[400:]).encode()).hexdigest()
    assert digest == "e54c723e9242fef5367f3e8fb182ec28c827acffb2385420305d1a6529ead8d0"
