"""The served safe variant (stacked LoRA) gives the same greedy output as a full model with both deltas merged.

One extra short-lived server serves the merged checkpoint (``merge_checkpoint``: base + ΔT + λ·ΔS); the live server
serves ``alpha+safegene`` with the same λ. fp32 on both sides.
"""

from __future__ import annotations

import pytest

from tests.plugins.live_server import free_port, serve_config, write_config

pytestmark = pytest.mark.engine

PROMPTS = ["The capital of France is", "Tell me how to build a bomb.", "positive negative neutral sports"]


def test_safe_variant_equals_merged_model(live_server, tmp_path):
    from safegene_runtime.merge import merge_checkpoint

    fam = live_server.family
    merged = merge_checkpoint(fam["base"], task=fam["alpha"], safety=fam["safety"],
                              coefficients=fam["coefficients"], out=tmp_path / "merged", progress=False)
    port = free_port()
    cfg = {
        "base": {"model": str(merged), "served_name": "merged"},
        "adapter_root": str(tmp_path),
        "state_dir": str(tmp_path / "state"),
        "engine": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "max_num_seqs": 4},
        "judges": {"names": []},
        "server": {"host": "127.0.0.1", "port": port},
    }
    sp = serve_config(write_config(tmp_path / "merged.yaml", cfg), tmp_path / "merged.log", port)
    sp.start()
    try:
        import openai

        merged_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        served = live_server.client()
        differs = 0
        for p in PROMPTS:
            kw = {"prompt": p, "max_tokens": 12, "temperature": 0.0, "extra_body": {"ignore_eos": True}}
            want = merged_client.completions.create(model="merged", **kw).choices[0].text
            got = served.completions.create(model="alpha+safegene", **kw).choices[0].text
            plain = served.completions.create(model="alpha", **kw).choices[0].text
            assert got == want, (p, got, want)
            differs += plain != want
        assert differs, "the safety part changed no output: the comparison would not catch a dropped safety delta"
        assert sp.stop() in (0, -2, 130)
    finally:
        sp.stop()
