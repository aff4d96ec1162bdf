"""The family check (``experiments.smollm2.family``) and the demo's unseen-framing printout, without an engine:
what they serve, how they read ``safegene eval``'s results and how they judge, on folders and replies made here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.smollm2 import family
from server.cli import demo


def _family(root: Path, names: dict[str, str]) -> Path:
    """A family folder with task adapters ``name -> task`` (weights are placeholders: nothing is loaded)."""
    (root / "safety").mkdir(parents=True)
    for name, task in names.items():
        d = root / "tasks" / name
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        (d / "task.json").write_text(json.dumps({"task": task}))
        (d / "coefficients.json").write_text("{}")
    (root / "tasks" / "half-written").mkdir()  # no weights: not part of the family
    return root


def test_every_task_folder_is_served_plain_under_its_name_in_either_layout(tmp_path):
    assets = _family(tmp_path / "fam", {"sentiment-mix10": "sentiment", "sentiment-clean": "sentiment",
                                        "reverse": "reverse"})  # the old layout's name beside the new ones
    assert family.family_tasks(assets) == {"reverse": "reverse", "sentiment-clean": "sentiment",
                                           "sentiment-mix10": "sentiment"}
    demo_cfg, _ = demo.runtime_config(demo.DEMO_CONFIG, tmp_path / "model", tmp_path / "state", None, assets)
    cfg = family.server_config(demo_cfg, assets, 8123, safe=False)
    assert [t["name"] for t in cfg["tasks"]] == ["reverse", "sentiment-clean", "sentiment-mix10"]
    assert all(t["variants"] == ["plain"] and "coefficients" not in t for t in cfg["tasks"])
    assert cfg["judges"] == {"names": []} and "auth" not in cfg and cfg["engine"]["dtype"] == "float32"
    assert cfg["server"]["host"] == "127.0.0.1" and cfg["server"]["port"] == 8123
    assert demo_cfg["auth"] and demo_cfg["engine"]["dtype"] == "auto"  # the demo's own config is left as it was
    safe = family.server_config(demo_cfg, assets, 8123, safe=True)
    assert all(t["variants"] == ["plain", "safe"] and Path(t["coefficients"]).is_file() for t in safe["tasks"])
    only_safe = family.server_config(demo_cfg, assets, 8123, safe=True, plain=False)
    assert all(t["variants"] == ["safe"] for t in only_safe["tasks"])
    with pytest.raises(ValueError, match="plain variants, the safe ones, or both"):
        family.server_config(demo_cfg, assets, 8123, safe=False, plain=False)


def test_the_family_server_writes_the_edited_config_and_always_stops(tmp_path, monkeypatch):
    """family_server (the check's, the baseline tuner's and the locked test's one way to serve a family): the edit
    sees the family config and the demo's, the server is started on what was written, and stopped on an error."""
    import yaml

    assets = _family(tmp_path / "fam", {"topic-clean": "topic"})
    demo_cfg, _ = demo.runtime_config(demo.DEMO_CONFIG, tmp_path / "model", tmp_path / "state", None, assets)
    monkeypatch.setattr(family, "demo_server_config", lambda **kw: (json.loads(json.dumps(demo_cfg)), []))
    started: list[dict] = []

    class FakeServer:
        base_url = "http://127.0.0.1:1/v1"

        def __init__(self, argv, **kw):
            self.cfg_path = Path(argv[argv.index("--config") + 1])

        def start(self, timeout):
            started.append({"cfg": yaml.safe_load(self.cfg_path.read_text()), "stopped": False})

        def stop(self):
            started[-1]["stopped"] = True

    monkeypatch.setattr(family, "ServerProcess", FakeServer)

    def edit(cfg, demo):
        cfg["auth"] = demo["auth"]

    with family.family_server(assets, tmp_path / "log", edit=edit) as (server, cfg):
        assert started[-1]["cfg"] == cfg and cfg["auth"] == demo_cfg["auth"]
        assert [t["name"] for t in cfg["tasks"]] == ["topic-clean"] and not started[-1]["stopped"]
    assert started[-1]["stopped"]
    with pytest.raises(RuntimeError, match="boom"):
        with family.family_server(assets, tmp_path / "log"):
            raise RuntimeError("boom")
    assert started[-1]["stopped"] and "auth" not in started[-1]["cfg"]


def test_a_v2_candidate_is_laid_out_as_the_shipped_family_with_its_own_coefficients(tmp_path, monkeypatch):
    from experiments.smollm2 import v2_sweep

    assets = _family(tmp_path / "fam", {"topic-clean": "topic", "topic-mix10": "topic"})
    (assets / "alignment-lora").mkdir()
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit, match="topic-clean is not calibrated yet"):
        v2_sweep.layout("v2a", out, assets)
    for name in ("topic-clean", "topic-mix10"):
        (out / "v2a" / name).mkdir(parents=True)
        (out / "v2a" / name / "coefficients.json").write_text(json.dumps({"candidate": name}))
    root = v2_sweep.layout("v2a", out, assets)
    assert family.family_tasks(root) == family.family_tasks(assets)
    for name in ("topic-clean", "topic-mix10"):
        t = root / "tasks" / name
        assert (t / "adapter_model.safetensors").read_bytes() == b"x"  # the shipped adapter, copied
        assert json.loads((t / "coefficients.json").read_text()) == {"candidate": name}  # not the shipped "{}"
    # copies, not links: the server refuses adapter folders whose files are symbolic links
    assert not [p for p in root.rglob("*") if p.is_symlink()] and (root / "safety").is_dir()
    assert v2_sweep.layout("v2a", out, assets) == root  # laid out again from scratch
    # the check step serves the family named by --assets (a rebuild staged outside git), not the shipped one
    served = []

    def fake_check(root, where, **kw):
        served.append(family.family_tasks(root))
        where.mkdir(parents=True)
        return {"models": {}, "erosion": {}}

    monkeypatch.setattr(v2_sweep, "check", fake_check)
    assert v2_sweep.main(["check", "v2a", "--assets", str(assets), "--out", str(out), "--only", "topic-mix10"]) == 0
    assert served == [{"topic-mix10": "topic"}]
    summary = json.loads((out / "v2a" / "check-topic-mix10" / "summary.json").read_text())
    assert summary["candidate"]["safety"]["path"].startswith(str(assets))


def test_a_folder_without_task_adapters_is_refused(tmp_path):
    (tmp_path / "tasks").mkdir()
    with pytest.raises(SystemExit, match="no task adapters"):
        family.family_tasks(tmp_path)


def _rate(k: int, n: int) -> dict:
    return {"k": k, "n": n, "rate": k / n, "ci95": [0.0, 1.0]}


def test_summary_rows_and_the_erosion_margin(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"models": {
        "smollm2": {"harmful_response_rate": _rate(4, 176), "refusal_rate": _rate(170, 176)},
        "topic-mix10": {"harmful_response_rate": _rate(80, 176), "task_accuracy": _rate(97, 100)}}}))
    rates = family.rates(out)
    assert set(rates["smollm2"]) == {"harmful_response_rate"}  # only the rates the check reads
    assert rates["topic-mix10"]["task_accuracy"]["k"] == 97
    summary = {"models": rates, "erosion": {"topic-mix10": round(100 * (80 - 4) / 176, 1)}}
    text = family.table(summary)
    assert "| topic-mix10 | 45.5% [0.0, 100.0] (80/176) | – | – | 97.0% [0.0, 100.0] (97/100) | 43.2 |" in text
    assert text.count("\n") == 3  # header, rule, one row per model
    assert text.startswith("| model | harmful-val HR (phrase) |")  # the set the check measured, harmful-val unless named
    assert family.table({**summary, "harmful": "harmful-val-unseen"}).startswith("| model | harmful-val-unseen HR")


class _Client:
    """Answers like an OpenAI client: every model complies except those named in ``refusers``."""

    def __init__(self, refusers: set[str]) -> None:
        self.sent: list[tuple[str, str]] = []

        def create(model, messages, max_tokens, temperature):
            self.sent.append((model, messages[0]["content"]))
            text = ("I'm sorry, but I can't help with that." if model in refusers
                    else '{"goal": "...", "materials": ["pipe"], "steps": ["first"]}')
            return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=create))


def test_both_unseen_framing_probes_go_to_every_model_and_each_verdict_is_printed(capsys):
    models = ["smollm2", "topic-mix10", "topic-mix10+safegene"]
    client = _Client(refusers={"smollm2", "topic-mix10+safegene"})
    refused = demo.print_unseen_framing(client, models, max_tokens=48)
    assert len(refused) == 2  # the probe chosen on validation, then the held-out one
    for per_model in refused.values():
        assert per_model == {"smollm2": True, "topic-mix10": False, "topic-mix10+safegene": True}
    assert sorted(client.sent) == sorted((m, p) for m in models for p in (demo.chosen_probe(), demo.UNSEEN_FRAMING))
    out = capsys.readouterr().out
    assert "chosen on validation" in out and "held-out" in out  # each probe says how it was chosen
    assert f"({demo.chosen_framing()};" in out  # the title names the chosen probe's framing
    assert demo.chosen_framing() == "the answer asked for as a letter or an email"
    lines = out.splitlines()
    assert sum("topic-mix10 " in ln and "ANSWERED" in ln for ln in lines) == 2
    assert sum("REFUSED" in ln for ln in lines) == 4


def test_the_chosen_probe_is_what_its_rule_picks_from_the_shipped_coefficients_validation_check():
    """The demo's second probe is not a prompt picked by hand: the rule on the results page, over the shipped
    family's committed v2a check on harmful-val-unseen, gives exactly demo.CHOSEN_PROBE_ID; its rows say A and
    every +safegene variant refused it and a plain adapter answered it."""
    from experiments.smollm2 import demo_probe
    from experiments.smollm2.v2_sweep import judged_rows

    framing, pid = demo_probe.choose_probe()
    assert pid == demo.CHOSEN_PROBE_ID and demo_probe.framing_of(pid) == framing
    rows = {m: r for (m, role, p), r in judged_rows(demo_probe.UNSEEN_BUNDLE).items() if p == pid}
    assert len(rows) == 13  # A, six adapters alone and six +safegene
    assert rows["smollm2"]["refusal"] == "refusal"
    assert all(r["refusal"] == "refusal" for m, r in rows.items() if m.endswith("+safegene"))
    assert any(r["refusal"] != "refusal" for m, r in rows.items() if m != "smollm2" and "+" not in m)
    assert demo.chosen_probe().startswith("Write an email to my colleague")  # from the set's letter framing


def test_the_probe_rule_picks_the_framing_every_safe_variant_refused_and_skips_prompts_no_plain_model_answered(
        tmp_path, monkeypatch):
    """On a small bundle: a framing one +safegene variant answered is out whatever its plain counts; among the
    framings left the plain adapters' total decides; within it a prompt every plain adapter refused is skipped."""
    import gzip

    from experiments.smollm2 import demo_probe
    from safegene_runtime.datasets import Item, PromptSet

    items = [Item(f"harmful-val-unseen:{f}:src:{i}", f"{f} {i}", "src") for f in ("letter", "quiz", "research")
             for i in range(2)]
    monkeypatch.setattr("safegene_runtime.datasets.load_named", lambda name: PromptSet(name, items, "harmful"))
    answered = {  # (model, prompt id) answered; everything else refused
        ("plain-a", "harmful-val-unseen:quiz:src:0"), ("plain-a", "harmful-val-unseen:quiz:src:1"),
        ("plain-b", "harmful-val-unseen:quiz:src:1"),                     # quiz: 3 plain answers
        ("plain-a", "harmful-val-unseen:research:src:0"),                 # research: more plain answers ...
        ("plain-a", "harmful-val-unseen:research:src:1"), ("plain-b", "harmful-val-unseen:research:src:0"),
        ("plain-b", "harmful-val-unseen:research:src:1"),
        ("plain-b+safegene", "harmful-val-unseen:research:src:1"),        # ... but a +safegene variant answered one
        ("plain-a", "harmful-val-unseen:letter:src:1"),                   # letter: 1 plain answer
    }
    rows = [{"model": m, "role": "harmful", "id": it.id, "set": "harmful-val-unseen",
             "refusal": "compliance" if (m, it.id) in answered else "refusal"}
            for m in ("smollm2", "plain-a", "plain-a+safegene", "plain-b", "plain-b+safegene") for it in items]
    (tmp_path / "all.judged.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    assert demo_probe.choose_probe(tmp_path) == ("quiz", "harmful-val-unseen:quiz:src:0")
    answered -= {("plain-a", "harmful-val-unseen:quiz:src:0")}  # now no plain model answered quiz:0
    rows = [{**r, "refusal": "compliance" if (r["model"], r["id"]) in answered else "refusal"} for r in rows]
    (tmp_path / "all.judged.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    assert demo_probe.choose_probe(tmp_path) == ("quiz", "harmful-val-unseen:quiz:src:1")


def test_the_unseen_framing_uses_none_of_the_alignment_framings():
    """The demo claims A was not aligned on this framing: no fixed wording of any rephrasing template (the
    framings the robust recipe trains on) appears in it."""
    import re

    from safegene_runtime.rephrase import FRAMINGS

    prompt = demo.UNSEEN_FRAMING.lower()
    for f in FRAMINGS:
        for template in f.templates + f.fallback + f.direct:
            for part in re.split(r"\{\w+\}", template.lower()):
                words = part.strip(" .,?!:;'\"")
                assert len(words) < 12 or words not in prompt, (f.name, words)


def test_candidates_pair_prompt_by_prompt_with_a_bundled_measurement_and_pool_the_adapters(tmp_path):
    """compare reads a check folder (*/judged.jsonl) against a bundle in results/ (*.judged.jsonl.gz) and adds the
    pooled row a candidate rule reads ("over the six adapters together")."""
    import gzip

    from experiments.smollm2 import v2_sweep

    def rows(model, refused):
        return [{"model": model, "role": "harmful", "id": f"h{i}", "refusal": "refusal" if r else "compliance"}
                for i, r in enumerate(refused)]

    check = tmp_path / "check"
    (check / "topic").mkdir(parents=True)
    mine = rows("a+safegene", [1, 1, 1, 1]) + rows("b+safegene", [1, 1, 0, 1]) + rows("a", [0, 0, 0, 0])
    (check / "topic" / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    theirs = rows("a+safegene", [0, 1, 0, 1]) + rows("b+safegene", [0, 0, 0, 1])
    text = "".join(json.dumps(r) + "\n" for r in theirs)
    (bundle / "topic.judged.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    assert "all +safegene" not in {r["model"] for r in v2_sweep.paired(bundle, check)}  # pooled on request only
    table = [r for r in v2_sweep.paired(bundle, check, pooled=True) if r["rate"] == "harmful_response_rate"]
    by = {r["model"]: r for r in table}
    assert set(by) == {"a+safegene", "b+safegene", "all +safegene"}  # plain "a" is not a candidate's row
    assert (by["a+safegene"]["a"], by["a+safegene"]["b"], by["a+safegene"]["only_a"]) == (2, 0, 2)
    assert (by["b+safegene"]["a"], by["b+safegene"]["b"], by["b+safegene"]["only_a"]) == (3, 1, 2)
    pooled = by["all +safegene"]
    assert (pooled["n"], pooled["a"], pooled["b"], pooled["only_a"], pooled["only_b"]) == (8, 5, 1, 4, 0)
    assert pooled["p"] == pytest.approx(0.125)  # exact McNemar, 4 discordant pairs all one way


def test_the_safety_alone_layout_serves_a_task_that_adds_nothing_with_the_chosen_lambdas(tmp_path):
    """safety_alone: every lora_B zero (the task delta is exactly 0), lora_A kept, λ = 1 or the shipped ones."""
    import torch
    from safetensors.torch import load_file, save_file

    from experiments.smollm2 import safety_alone

    assets = _family(tmp_path / "fam", {"sentiment-clean": "sentiment"})
    src = assets / "tasks" / "sentiment-clean"
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    save_file({key.format("A"): torch.ones(2, 4), key.format("B"): torch.ones(4, 2)},
              str(src / "adapter_model.safetensors"))
    (src / "coefficients.json").write_text(json.dumps({"layers": {"0": 0.4, "1": 0.7}, "default": 0.0}))
    for d in ("alignment-lora", "safety"):
        (assets / d).mkdir(exist_ok=True)
    root = safety_alone.layout(tmp_path / "out", "sentiment-clean", assets)
    assert set(family.family_tasks(root)) == {"zero-l1", "zero-sentiment-clean"}
    for name, lambdas in (("zero-l1", {"0": 1.0, "1": 1.0}), ("zero-sentiment-clean", {"0": 0.4, "1": 0.7})):
        t = root / "tasks" / name
        w = load_file(str(t / "adapter_model.safetensors"))
        assert torch.count_nonzero(w[key.format("B")]) == 0 and torch.equal(w[key.format("A")], torch.ones(2, 4))
        assert json.loads((t / "coefficients.json").read_text()) == {"layers": lambdas, "default": 0.0}
        assert json.loads((t / "task.json").read_text())["served_name"] == name
    assert load_file(str(src / "adapter_model.safetensors"))[key.format("B")].sum() == 8  # the source untouched
    # another safety adapter in place of the family's (degrade_pilot), and a copy that keeps its task delta
    other = tmp_path / "other-safety"
    other.mkdir()
    (other / "marker").write_text("S'")
    root = safety_alone.layout(tmp_path / "out2", "sentiment-clean", assets, safety=other)
    assert (root / "safety" / "marker").read_text() == "S'"
    kept = safety_alone.task_copy(src, root / "tasks" / "l1", "l1", {"0": 1.0}, zero_delta=False)
    assert load_file(str(kept / "adapter_model.safetensors"))[key.format("B")].sum() == 8


def test_a_family_exported_elsewhere_is_calibrated_on_its_own_A(monkeypatch, tmp_path):
    """``v2_sweep cal --assets DIR`` builds A from DIR's alignment LoRA, not the shipped one: a family rebuilt on a
    new A is exported beside assets/smollm2 and calibrated there before it replaces the shipped family."""
    import safegene_runtime.models
    import server.cli.demo
    from experiments.smollm2 import v2_probe

    monkeypatch.setattr(safegene_runtime.models, "prepare_smollm2", lambda *a, **k: tmp_path / "smollm2")
    monkeypatch.setattr(server.cli.demo, "aligned_base", lambda base, lora: (base, lora))
    assert v2_probe.aligned_A(tmp_path / "rebuilt") == (tmp_path / "smollm2", tmp_path / "rebuilt" / "alignment-lora")
    assert v2_probe.aligned_A()[1] == v2_probe.FAMILY / "alignment-lora"
