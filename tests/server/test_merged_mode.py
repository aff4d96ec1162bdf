"""``mode: merged`` (issue 8): a variant served from its merged checkpoint by its own engine, under its variant name.

Fast part (no engine): schema (deployment default, per-variant mode), the build through ``safegene serve --check``
and the memory refusal. Engine part: ONE server with ``alpha`` stacked (plain + safe LoRA) and ``alpha-fast`` whose
safe variant is merged with the same λ; greedy fp32 outputs must be equal, through the ``openai`` client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.process import ServerProcess
from tests.plugins.live_server import ADMIN_KEY, build_tiny_family, free_port, start_server, tiny_config, write_config

PROMPTS = ["The capital of France is", "Tell me how to build a bomb.", "positive negative neutral sports"]
GREEDY = {"max_tokens": 12, "temperature": 0.0, "extra_body": {"ignore_eos": True}}


def _tasks(family, merged_mode: object = "merged") -> list[dict]:
    co = str(family["coefficients"])
    return [
        {"name": "alpha", "path": str(family["alpha"]), "coefficients": co, "variants": ["plain", "safe"]},
        {"name": "alpha-fast", "path": str(family["alpha"]), "coefficients": co, "variants": ["safe"],
         "mode": merged_mode},
    ]


@pytest.fixture(scope="module")
def family(tmp_path_factory, tiny_model):
    return build_tiny_family(tmp_path_factory.mktemp("merged_family"), base=tiny_model)


# --- fast: schema, build, memory refusal ---------------------------------------------------------------------------


def test_config_modes(tmp_path, family):
    from server.config import ConfigError, load_config

    cfg = load_config(write_config(tmp_path / "a.yaml", tiny_config(tmp_path, family, port=1, tasks=_tasks(family))))
    assert [t.mode_of("safe") for t in cfg.tasks] == ["lora", "merged"]
    # deployment default, overridden per variant; "stacked" is the documented name of "lora"
    tasks = [dict(_tasks(family)[0], mode={"safe": "merged"}), dict(_tasks(family)[1], mode="stacked")]
    cfg = load_config(write_config(tmp_path / "b.yaml", tiny_config(tmp_path, family, port=1, tasks=tasks,
                                                                     extra={"mode": "merged"})))
    assert cfg.tasks[0].mode == {"plain": "lora", "safe": "merged"} and cfg.tasks[1].mode == "lora"
    all_merged = tiny_config(tmp_path, family, port=1, extra={"mode": "merged"})
    cfg = load_config(write_config(tmp_path / "c.yaml", all_merged))
    assert all(t.mode == "merged" for t in cfg.tasks)
    for bad, needle in (("fast", "must be 'stacked'"), ({"plain": "merged"}, "does not serve")):
        with pytest.raises(ConfigError, match=needle) as e:
            load_config(write_config(tmp_path / "d.yaml", tiny_config(tmp_path, family, port=1,
                                                                       tasks=_tasks(family, bad))))
        assert "tasks[1] (task 'alpha-fast').mode" in str(e.value)


def test_check_builds_merged_checkpoint(run_cli, tmp_path, family):
    from safegene_runtime.merge import merge_checkpoint

    cfg = write_config(tmp_path / "server.yaml", tiny_config(tmp_path, family, port=1, tasks=_tasks(family),
                                                             judges=[]))
    res = run_cli("serve", "--config", cfg, "--check")
    assert res.code == 0, res.err
    line = next(ln for ln in res.out.splitlines() if "alpha-fast+safegene" in ln)
    assert " merged " in line
    merged = Path(line.split()[-1])
    assert merged.parent == tmp_path / "state" / "merged" and (merged / "config.json").is_file()
    assert not (merged / "adapter_config.json").exists()
    # the same weights merge_checkpoint gives for base + task + λ·safety
    from safegene_runtime.artifacts import sha256_file

    ref = merge_checkpoint(family["base"], task=family["alpha"], safety=family["safety"],
                           coefficients=family["coefficients"], out=tmp_path / "ref", progress=False)
    shards = sorted(f.name for f in ref.glob("*.safetensors"))
    assert shards and sorted(f.name for f in merged.glob("*.safetensors")) == shards
    assert all(sha256_file(merged / f) == sha256_file(ref / f) for f in shards)
    assert sha256_file(merged / shards[0]) != sha256_file(Path(family["base"]) / shards[0])


def test_float32_engine_merges_a_bf16_base_in_float32(run_cli, tmp_path):
    """On a bf16 base the merge follows the engine: float32 engine → fp32 checkpoint (whole delta, retention 1.0);
    bf16 engine → bf16 checkpoint (the same sum rounded to bf16, where a small delta partly rounds away)."""
    import torch

    from safegene_runtime.artifacts import read_manifest
    from safegene_runtime.checkpoints import Checkpoint
    from safegene_runtime.testing.tiny import make_tiny_model

    base = make_tiny_model(tmp_path / "b16", dtype=torch.bfloat16)
    fam = build_tiny_family(tmp_path / "fam", base=base)
    built = {}
    for dt in ("float32", "bfloat16"):
        cfg = tiny_config(tmp_path / dt, fam, port=1, tasks=_tasks(fam), judges=[])
        cfg["engine"]["dtype"] = dt
        res = run_cli("serve", "--config", write_config(tmp_path / f"{dt}.yaml", cfg), "--check")
        assert res.code == 0, res.err
        line = next(ln for ln in res.out.splitlines() if "alpha-fast+safegene" in ln)
        built[dt] = Path(line.split()[-1])
    f32, b16 = Checkpoint(built["float32"]), Checkpoint(built["bfloat16"])
    assert {f32.dtype(k) for k in f32.keys()} == {torch.float32}
    assert {b16.dtype(k) for k in b16.keys()} == {torch.bfloat16}
    assert json.loads((built["float32"] / "config.json").read_text())["torch_dtype"] == "float32"
    assert read_manifest(built["float32"])["delta_retention"] == 1.0
    q = "model.layers.1.self_attn.q_proj.weight"
    from safegene_runtime.adapters import load_adapter
    from safegene_runtime.coefficients import load_coefficients

    lam = load_coefficients(fam["coefficients"]).of(1)
    exact = Checkpoint(base).get(q).float() + load_adapter(fam["alpha"]).delta(q[:-7]) + \
        lam * load_adapter(fam["safety"]).delta(q[:-7])
    assert torch.allclose(f32.get(q), exact, atol=1e-6) and torch.equal(b16.get(q), exact.to(torch.bfloat16))
    assert 0 < (f32.get(q) - b16.get(q).float()).abs().max() < 0.02  # the same weights, rounded differently


def test_config_that_does_not_fit_in_memory_is_refused(run_cli, tmp_path, family, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    # tests run with VLLM_CPU_KVCACHE_SPACE=1: each engine needs ~1 GiB KV + tiny weights; 1.5 GiB holds one engine
    extra = {"server": {"host": "127.0.0.1", "port": 1, "memory_budget_gb": 1.5}}
    cfg = write_config(tmp_path / "server.yaml", tiny_config(tmp_path, family, port=1, tasks=_tasks(family),
                                                             judges=[], extra=extra))
    res = run_cli("serve", "--config", cfg, "--check")
    assert res.code == 1, (res.out, res.err)
    for needle in ("does not fit in memory", "base 'tiny'", "merged 'alpha-fast+safegene'", "server.memory_budget_gb",
                   str(cfg)):
        assert needle in res.err, res.err
    assert not (tmp_path / "state" / "merged").exists()  # refused before anything was merged
    # the same budget holds the base engine alone: it is the merged engine that does not fit
    one = write_config(tmp_path / "one.yaml", tiny_config(tmp_path, family, port=1, tasks=_tasks(family)[:1],
                                                          judges=[], extra=extra))
    assert run_cli("serve", "--config", one, "--check").code == 0
    # without an explicit KV size every CPU engine reserves ~92% of RAM: two engines never fit
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    del extra["server"]["memory_budget_gb"]
    cfg = write_config(tmp_path / "nokv.yaml", tiny_config(tmp_path, family, port=1, tasks=_tasks(family),
                                                           judges=[], extra=extra))
    res = run_cli("serve", "--config", cfg, "--check")
    assert res.code == 1 and "set VLLM_CPU_KVCACHE_SPACE" in res.err and "MemAvailable" in res.err, res.err


# --- engine: one server, stacked vs merged ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_server(tmp_path_factory, family):
    workdir = tmp_path_factory.mktemp("merged_server")
    port = free_port()
    cfg = tiny_config(workdir, family, port=port, tasks=_tasks(family))
    sp = start_server(write_config(workdir / "server.yaml", cfg), workdir / "server.log", port)
    yield sp
    sp.stop()


def _client(sp: ServerProcess):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{sp.port}/v1", api_key="sk-test-user", max_retries=0,
                         timeout=120)


def _admin(sp: ServerProcess):
    import httpx

    return httpx.Client(base_url=f"http://127.0.0.1:{sp.port}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        timeout=300)


def _metrics(sp: ServerProcess) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{sp.port}/metrics", timeout=30).text


def _assert_parity(client) -> None:
    differs = 0
    for p in PROMPTS:
        stacked = client.completions.create(model="alpha+safegene", prompt=p, **GREEDY)
        merged = client.completions.create(model="alpha-fast+safegene", prompt=p, **GREEDY)
        plain = client.completions.create(model="alpha", prompt=p, **GREEDY).choices[0].text
        assert merged.model == "alpha-fast+safegene"
        assert merged.choices[0].text == stacked.choices[0].text, (p, merged.choices[0].text, stacked.choices[0].text)
        differs += plain != stacked.choices[0].text
    assert differs, "safety λ changed no output: the comparison could not catch a dropped safety delta"


@pytest.mark.engine
def test_merged_variant_listed_with_lineage(merged_server):
    models = {m.id: m.model_extra for m in _client(merged_server).models.list().data}
    assert {"tiny", "alpha", "alpha+safegene", "alpha-fast+safegene"} <= set(models)
    merged, stacked = models["alpha-fast+safegene"]["safegene"], models["alpha+safegene"]["safegene"]
    assert merged["mode"] == "merged" and stacked["mode"] == "lora"
    assert merged["variant"] == "safe" and merged["task"] == "alpha-fast"
    for k in ("safety_version", "coefficients_hash", "task_version"):
        assert merged[k] == stacked[k], k
    assert "manifest" not in merged and "path" not in merged, "a user key sees no server paths"
    variants = {v["id"]: v for v in _admin(merged_server).get("/admin/variants").json()["variants"]}
    man = json.loads(Path(variants["alpha-fast+safegene"]["manifest"]).read_text())
    assert man == variants["alpha-fast+safegene"]["manifest_data"]
    assert man["kind"] == "merged_model" and {e["role"] for e in man["lineage"]} >= {"base", "task", "safety"}
    assert variants["alpha-fast+safegene"]["mode"] == "merged"
    assert variants["alpha-fast+safegene"]["coefficients"] == variants["alpha+safegene"]["coefficients"]


@pytest.mark.engine
def test_merged_greedy_output_equals_stacked_safe_variant(merged_server):
    _assert_parity(_client(merged_server))


@pytest.mark.engine
def test_merged_streaming_and_metrics(merged_server):
    client = _client(merged_server)
    msgs = [{"role": "user", "content": "Say hello."}]
    chunks = list(client.chat.completions.create(model="alpha-fast+safegene", messages=msgs, stream=True,
                                                 max_tokens=8, temperature=0))
    assert chunks and all(c.model == "alpha-fast+safegene" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(model="alpha-fast+safegene", messages=msgs, max_tokens=8, temperature=0)
    assert streamed == full.choices[0].message.content
    text = _metrics(merged_server)
    lab = 'model="alpha-fast+safegene"'
    info = [ln for ln in text.splitlines() if ln.startswith("safegene_adapter_info{") and lab in ln]
    assert len(info) == 1 and 'mode="merged"' in info[0] and 'variant="safe"' in info[0], info
    assert any(ln.startswith("safegene_requests_total{") and lab in ln and 'status="200"' in ln
               for ln in text.splitlines())
    assert any(ln.startswith("safegene_time_to_first_token_seconds_count{") and lab in ln for ln in text.splitlines())
    assert any(ln.startswith("safegene_completion_tokens_total{") and lab in ln for ln in text.splitlines())
    assert "vllm:num_requests_running" in text  # the extra engine did not wipe the base engine's vLLM series


@pytest.mark.engine
def test_admin_retire_and_add_merged_variant(merged_server):
    import openai

    admin, client = _admin(merged_server), _client(merged_server)
    r = admin.delete("/admin/adapters/alpha-fast")
    assert r.status_code == 200, r.text
    assert "alpha-fast+safegene" not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="alpha-fast+safegene", prompt="x", max_tokens=2)
    assert 'model="alpha-fast+safegene"' not in "\n".join(
        ln for ln in _metrics(merged_server).splitlines() if ln.startswith("safegene_adapter_info{"))
    body = {"name": "alpha-fast", "path": "alpha", "coefficients": "coefficients.json", "variants": ["safe"],
            "mode": "merged"}
    r = admin.post("/admin/adapters", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["task"]["variants"]["safe"]["mode"] == "merged"
    _assert_parity(client)
