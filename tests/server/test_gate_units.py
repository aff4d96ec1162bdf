"""The server side of the safety gate without an engine: the ``gate:`` config section, the metrics' last-run series,
the job API's routes and error bodies, and the middleware's in-process path (which no HTTP client can take)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import yaml

from safegene_runtime.gate import DEFAULT_CAPACITY_SHARE, GateSets, GateThresholds
from server import metrics as M
from server.admin import handle_admin
from server.app import INTERNAL_SCOPE, SafeGeneMiddleware, internal_completer
from server.auth import AuthConfig, KeyScope
from server.config import ConfigError, load_config
from server.jobs import Jobs
from server.registry import RegistryError


def _config(tmp_path, gate, *, safety=True):
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    base = tmp_path / "base"
    if not (base / "config.json").is_file():
        make_tiny_model(base)
        make_random_lora(tmp_path / "safety", base, rank=4, seed=1)
    raw = {"base": {"model": str(base), "served_name": "tiny"}, "gate": gate}
    if safety:
        raw["safety"] = str(tmp_path / "safety")
    p = tmp_path / "server.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_config(p)


def test_a_gate_section_turns_the_gate_on_with_the_runtime_defaults(tmp_path):
    assert _config(tmp_path, None).gate is None
    g = _config(tmp_path, {}).gate
    assert g is not None and g.enabled
    assert g.thresholds == GateThresholds() and g.sets == GateSets() and g.capacity_share == DEFAULT_CAPACITY_SHARE
    assert g.concurrency(8) == max(1, int(DEFAULT_CAPACITY_SHARE * 8))
    assert g.concurrency(1) == 1  # never zero: a gate always makes progress
    assert g.idle_share == 1.0 and g.idle_concurrency(8) == 8  # an idle server: the whole batch
    assert not g.early_start and _config(tmp_path, {"early_start": True}).gate.early_start
    assert _config(tmp_path, {"idle_share": 0.25}).gate.idle_concurrency(8) == 2  # = the share: never borrows
    off = _config(tmp_path, {"enabled": False}).gate
    assert off is not None and not off.enabled
    shots = tmp_path / "harm.jsonl"
    shots.write_text('{"prompt": "x"}\n')
    g = _config(tmp_path, {"thresholds": {"max_harm_increase": 2}, "sets": {"harmful": "harm.jsonl"},
                           "max_tokens": 16, "capacity_share": 0.5, "max_prompts": 20}).gate
    assert g.thresholds.max_harm_increase == 2 and g.thresholds.max_task_drop == GateThresholds().max_task_drop
    assert g.sets.harmful == str(shots.resolve()) and g.sets.benign == GateSets().benign
    assert (g.sets.max_tokens, g.capacity_share, g.max_prompts) == (16, 0.5, 20)


@pytest.mark.parametrize("gate, message", [
    ({"threshold": {}}, "unknown key(s) threshold"),
    ({"thresholds": {"max_harm": 1}}, "gate.thresholds"),
    ({"capacity_share": 0.5, "idle_share": 0.25}, "gate.idle_share"),
    ({"early_start": "yes"}, "gate.early_start"),
    ({"thresholds": {"max_harm_increase": -1}}, "must be a number of points in [0, 100]"),
    ({"sets": {"harmful": "harmbench-test"}}, "is in the TEST family"),
    ({"sets": {"benign": "rho-overrefusal"}}, "is in the TEST family"),
    ({"sets": {"benign": "rho-benign"}}, "is in the ALIGN-TRAIN family"),  # the aligned model trained on it
    ({"sets": {"harmful": "harmbench-val"}}, "is in the SOURCE family"),
    ({"sets": {"harmful": "edgy-benign-val"}}, "holds benign prompts"),
    ({"sets": {"benign": "no-such-file.jsonl"}}, "neither a named set nor a file"),
    ({"capacity_share": 0}, "gate.capacity_share"),
    ({"capacity_share": 1.5}, "gate.capacity_share"),
    ({"max_tokens": 0}, "gate.max_tokens"),
    ({"harm_judge": "prompt_harm"}, "reads only the prompt"),
    ({"enabled": "yes"}, "gate.enabled"),
    ("on", "expected a mapping"),
])
def test_a_bad_gate_section_is_refused_naming_the_key(tmp_path, gate, message):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, gate)
    assert message in str(e.value) and "gate" in str(e.value)


def test_the_gate_needs_a_safety_adapter(tmp_path):
    with pytest.raises(ConfigError, match="needs a top-level 'safety' adapter"):
        _config(tmp_path, {}, safety=False)


def test_the_last_run_series_are_replaced_per_task():
    def samples(name):
        return {tuple(sorted(s.labels.items())): s.value for fam in REGISTRY.collect() for s in fam.samples
                if s.name == name and s.labels.get("task", "").startswith("unit-")}

    from prometheus_client import REGISTRY

    M.set_gate_last("unit-a", "refuse", {("plain", "harmful_response_rate"): 0.5})
    M.set_gate_last("unit-b", "promote", {("safe", "over_refusal_rate"): 0.1})
    M.set_gate_last("unit-a", "promote", {("safe", "harmful_response_rate"): 0.0})
    verdicts = samples("safegene_gate_last_verdict")
    assert verdicts == {(("task", "unit-a"), ("verdict", "promote")): 1.0,
                        (("task", "unit-b"), ("verdict", "promote")): 1.0}
    rates = samples("safegene_gate_last_rate")
    assert rates == {(("metric", "harmful_response_rate"), ("task", "unit-a"), ("variant", "safe")): 0.0,
                     (("metric", "over_refusal_rate"), ("task", "unit-b"), ("variant", "safe")): 0.1}


def test_gate_routes_answer_for_gated_jobs_only_and_cancel_marks_the_job(tmp_path):
    jobs = Jobs()
    plain = jobs.create("a", "v1")
    gated = jobs.create("b", "v2")
    gated.gate = {"progress": {"done": 3, "total": 10}, "verdict": None, "report": None,
                  "staging": {"plain": "b.gate-x"}}
    registry = SimpleNamespace(jobs=jobs)

    def call(method, path):
        return asyncio.run(handle_admin(registry, method, path, b""))  # type: ignore[arg-type]

    status, view = call("GET", f"/admin/gate/{gated.id}")
    assert status == 200 and view["progress"] == {"done": 3, "total": 10} and view["state"] == "queued"
    assert view["verdict"] is None and view["report"] is None
    status, listing = call("GET", "/admin/gate")
    assert [j["id"] for j in listing["jobs"]] == [gated.id]
    with pytest.raises(RegistryError) as e:
        call("GET", f"/admin/gate/{plain.id}")
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(RegistryError) as e:
        call("POST", f"/admin/gate/{gated.id}")
    assert e.value.status == 405
    status, view = call("DELETE", f"/admin/gate/{gated.id}")
    assert status == 200 and gated.cancel_requested and view["stage"] == "cancelling"


def _mw(inner):
    auth = AuthConfig(user=(KeyScope(("sk-user",)),), admin_keys=("sk-admin",))
    cfg = SimpleNamespace(auth=auth, max_body_bytes=1 << 20,
                          max_choices=16, served_name="base")
    registry = SimpleNamespace(served={}, labels_for=lambda name: {"model": M.UNKNOWN, "variant": "", "task": ""})

    async def admit(name, timeout=None):
        return None  # a staging name is not served: admission finds nothing

    registry.admit = admit
    return SafeGeneMiddleware(inner, cfg=cfg, registry=registry, judge_queue=None,  # type: ignore[arg-type]
                              models_handler=None, max_model_len=128)


def test_only_the_in_process_path_reaches_a_staging_name():
    reached: list[str] = []

    async def engine(scope, receive, send):
        body = json.loads((await receive())["body"])
        reached.append(body["model"])
        data = json.dumps({"choices": [{"message": {"content": "I'm sorry, but no."}, "finish_reason": "stop"}]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": data.encode()})

    mw = _mw(engine)
    got = asyncio.run(internal_completer(mw)("t.gate-job-1", "hello", 4))
    assert got == {"response": "I'm sorry, but no.", "finish": "stop"} and reached == ["t.gate-job-1"]

    # the same name over HTTP, with a valid user key: 404, and the engine never sees it
    sent: list[dict] = []
    body = json.dumps({"model": "t.gate-job-1", "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"authorization", b"Bearer sk-user")]}
    asyncio.run(mw(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    err = json.loads(b"".join(m.get("body", b"") for m in sent if "body" in m))["error"]
    assert start["status"] == 404 and err["code"] == "model_not_found" and reached == ["t.gate-job-1"]
    assert INTERNAL_SCOPE not in scope
