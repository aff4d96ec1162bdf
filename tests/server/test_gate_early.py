"""The gate's early start without an engine: the base and the plain form are evaluated while the build worker still
calibrates, the gate run proper asks only for the safe form, and the decision is the one a whole run makes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from server.config import load_config
from server.gate import GateRunner
from server.jobs import Jobs
from server.records import TaskRecord, VariantRecord

#: what each fake model answers: the base and safe refuse, plain complies
ANSWERS = {"tiny": "I'm sorry, but I can't help with that.", "plain": "Sure, here is how: step one",
           "safe": "I cannot help with that request."}


class FakeEngine:
    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}
        self.events: list[tuple[str, str]] = []

    async def load(self, name: str, path: Path) -> None:
        self.loaded[name] = Path(path)
        self.events.append(("load", name))

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)
        self.events.append(("unload", name))


def _runner(tmp_path):
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    make_tiny_model(tmp_path / "base")
    make_random_lora(tmp_path / "safety", tmp_path / "base", rank=4, seed=1)
    (tmp_path / "server.yaml").write_text(yaml.safe_dump({
        "base": {"model": str(tmp_path / "base"), "served_name": "tiny"}, "safety": str(tmp_path / "safety"),
        "gate": {"max_prompts": 3, "max_tokens": 8}}))
    cfg = load_config(tmp_path / "server.yaml")
    cfg.artifact_store.mkdir(parents=True, exist_ok=True)
    asked: list[str] = []
    engine = FakeEngine()

    async def complete(model: str, prompt: str, max_tokens: int) -> dict:
        kind = "tiny" if model == "tiny" else engine.loaded[model].name  # the staged folder's name says the form
        asked.append(kind)
        await asyncio.sleep(0)
        return {"response": ANSWERS[kind], "finish": "stop"}

    return GateRunner(cfg, complete, max_num_seqs=8), engine, asked


def _record(tmp_path) -> TaskRecord:
    for form in ("plain", "safe"):
        (tmp_path / form).mkdir(exist_ok=True)
    variants = {"plain": VariantRecord("t", str(tmp_path / "plain"), 4),
                "safe": VariantRecord("t+safegene", str(tmp_path / "safe"), 8)}
    return TaskRecord(name="t", version="v1", source="admin", spec={}, mode="lora").with_variants(variants)


def test_an_early_start_evaluates_base_and_plain_during_the_build_and_the_run_only_the_safe_form(tmp_path):
    runner, engine, asked = _runner(tmp_path)
    rec = _record(tmp_path)
    jobs = Jobs()

    async def gated(early_start: bool):
        job = jobs.create("t", "v1")
        job.gate = {"progress": {"done": 0, "total": 0}, "verdict": None, "report": None}  # as the registry makes it
        early = runner.early(job, "t", engine, None) if early_start else None
        if early is not None:
            early.start(Path(rec.variants["plain"].path), "v1")  # what the build worker reports before calibrating
            for _ in range(500):  # the build worker would still be calibrating
                await asyncio.sleep(0.01)
                if "plain" in asked:
                    break
            assert any(n.startswith("t.gate-") for n in engine.loaded)  # plain staged while "calibrating"
            assert job.gate is not None and job.gate["progress"]["total"] > 0
        try:
            out = await runner.run(job, rec, engine, task_file=None, calibration=None, early=early)
        finally:
            if early is not None:
                await early.close()
        return job, out

    job, early_out = asyncio.run(gated(True))
    first = list(asked)
    n = len(first) // 3  # prompts per model: base, plain and safe each answer every prompt of the sets once
    assert sorted(set(first)) == ["plain", "safe", "tiny"] and [first.count(k) for k in ANSWERS] == [n, n, n]
    assert first.index("safe") > max(i for i, k in enumerate(first) if k == "plain")  # safe only after the build
    assert not engine.loaded, engine.events  # every staging name unloaded
    assert job.gate["progress"] == {"done": 3 * n, "total": 3 * n}
    assert (job.gate["concurrency"], job.gate["idle_concurrency"]) == (runner.concurrency, runner.idle_concurrency)

    asked.clear()
    runner._base_rows.clear()  # the same run without the early start (base cache emptied: same requests)
    _, whole_out = asyncio.run(gated(False))
    assert sorted(asked) == sorted(first)
    assert early_out.decision.verdict == whole_out.decision.verdict == "promote_safe_only"
    assert early_out.decision.checks == whole_out.decision.checks
    rows = [json.loads(x) for x in (early_out.path / "responses.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"tiny", "t@v1", "t+safegene@v1"}


def test_an_early_start_that_does_not_cover_the_built_version_is_not_used_and_close_unloads(tmp_path):
    runner, engine, asked = _runner(tmp_path)
    rec = _record(tmp_path)
    jobs = Jobs()

    async def go():
        job = jobs.create("t", "v1")
        early = runner.early(job, "t", engine, None)
        other = tmp_path / "other"
        other.mkdir()
        (other / "plain").mkdir()
        early.start(other / "plain", "v0")  # another folder and version than the record the build returned
        await asyncio.sleep(0.05)
        out = await runner.run(job, rec, engine, task_file=None, calibration=None, early=early)
        await early.close()
        return out

    out = asyncio.run(go())
    assert out.decision.verdict == "promote_safe_only"
    assert not engine.loaded and sum(1 for e in engine.events if e[0] == "load") == 3  # early plain + plain + safe
    first_plain = [i for i, e in enumerate(engine.events) if e[1].startswith("t.gate-")]
    assert engine.events[first_plain[1]] == ("unload", engine.events[first_plain[0]][1])  # unloaded before reloaded


def test_closing_an_early_start_mid_evaluation_cancels_it_and_unloads_the_staging_name(tmp_path):
    runner, engine, asked = _runner(tmp_path)
    jobs = Jobs()

    async def go():
        job = jobs.create("t", "v1")
        (tmp_path / "plain").mkdir()
        early = runner.early(job, "t", engine, None)
        early.start(tmp_path / "plain", "v1")
        for _ in range(500):  # until the staging name is loaded and requests flow
            await asyncio.sleep(0.01)
            if asked:
                break
        await early.close()  # e.g. the build failed: the registry closes the early start
        return job

    asyncio.run(go())
    assert asked and not engine.loaded and engine.events[-1][0] == "unload"


def test_the_gate_fills_the_idle_share_only_while_no_client_request_is_in_flight(tmp_path):
    """capacity_share 0.25 and idle_share 1.0 of a batch of 8: 8 gate requests at once on an idle server, 2 while a
    client request is in flight (the limit is read before each request)."""
    runner, engine, _ = _runner(tmp_path)
    runner.concurrency, runner.idle_concurrency = 2, 8
    runner.spec.max_prompts = 12  # 24 requests: enough to fill 8 at once
    clients = {"n": 0}
    runner.clients = lambda: clients["n"]
    running = {"now": 0, "max": 0}

    async def complete(model: str, prompt: str, max_tokens: int) -> dict:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= 1
        return {"response": ANSWERS["tiny"], "finish": "stop"}

    runner.complete = complete
    jobs = Jobs()

    async def go(busy: bool):
        clients["n"] = 1 if busy else 0
        running["max"] = 0
        job = jobs.create("t", None)
        runner.begin(job)
        runner._base_rows.clear()
        sets = await asyncio.to_thread(runner.sets, None)
        rows = await runner.evaluate(job, sets, {"tiny": None})
        return job, rows, sets

    job, rows, sets = asyncio.run(go(busy=False))
    assert running["max"] == 8
    assert [(r["role"], r["id"]) for r in rows] == [(role, it.id) for role, s in sets.items() for it in s.items]
    assert job.gate["progress"] == {"done": len(rows), "total": len(rows)}
    asyncio.run(go(busy=True))
    assert running["max"] == 2
