"""Bad registrations under load, and build jobs (the session's live_server, loopback; bounded in count and time).

100 bad registrations (corrupt and truncated safetensors, oversized header, wrong shapes, over-rank, .bin only,
``../``, an absolute path, an inner symlink, another base model, a digest mismatch), each refused with a JSON 4xx in
at most 1 s, while 16 clients stream: none of their requests fails. Then a build as an asynchronous job, and a
cancelled one that never serves.
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.engine

STREAMERS = 16
BAD = 100


def _bad_adapters(server) -> dict[str, dict]:
    """Registration bodies, one per way of being wrong (folders made under the adapter root once)."""
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    root = server.adapter_root
    good = root / "load-good"
    if not good.exists():
        make_random_lora(good, server.family["base"], rank=8, seed=61)
    w = "adapter_model.safetensors"

    def variant(name: str, edit) -> str:
        d = root / f"bad-{name}"
        if not d.exists():
            shutil.copytree(good, d)
            edit(d)
        return d.name

    def reshape(d):
        t = load_file(str(d / w))
        kb = next(k for k in t if k.endswith("lora_B.weight"))
        t[kb] = torch.zeros(t[kb].shape[0] + 1, t[kb].shape[1])
        save_file(t, str(d / w))

    def other_base(d):
        other = make_tiny_model(server.workdir / "other-base", hidden_size=192, num_heads=3, num_kv_heads=3)
        shutil.rmtree(d)
        make_random_lora(d, other, rank=8, seed=62)

    def over_rank(d):
        shutil.rmtree(d)
        make_random_lora(d, server.family["base"], rank=64, seed=63)

    paths = {
        "corrupt": variant("corrupt", lambda d: (d / w).write_bytes(b"\x10\0\0\0\0\0\0\0" + b"x" * 64)),
        "truncated": variant("truncated", lambda d: (d / w).write_bytes((d / w).read_bytes()[:-64])),
        "huge-header": variant("huge", lambda d: (d / w).write_bytes((1 << 40).to_bytes(8, "little"))),
        "wrong-shapes": variant("shapes", reshape),
        "over-rank": variant("rank", over_rank),
        "bin-only": variant("bin", lambda d: (d / w).rename(d / "adapter_model.bin")),
        "dotdot": "../outside",
        "absolute": "/etc",
        "symlink": variant("link", lambda d: ((d / w).unlink(), (d / w).symlink_to(good / w))),
        "wrong-base": variant("base", other_base),
        "digest": good.name,
    }
    coeff = {"coefficients": {"layers": {}, "default": 0.5}}
    bodies = {kind: {"path": path, **coeff} for kind, path in paths.items()}
    bodies["digest"]["digest"] = "0" * 64
    return bodies


def test_bad_registrations_under_load_are_refused_fast_and_nothing_fails(live_server):
    bodies = _bad_adapters(live_server)
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def stream(i: int) -> None:
        model = ["alpha", "alpha+safegene", "beta", "beta+safegene"][i % 4]
        with httpx.Client(base_url=live_server.root_url, timeout=120,
                          headers={"Authorization": f"Bearer {live_server.api_key}"}) as c:
            while not stop.is_set():
                try:
                    with c.stream("POST", "/v1/chat/completions", json={
                            "model": model, "max_tokens": 8, "stream": True, "ignore_eos": True,
                            "messages": [{"role": "user", "content": "Hello"}]}) as r:
                        data = b"".join(r.iter_bytes())
                    if r.status_code != 200 or b"[DONE]" not in data:
                        failures.append(f"{model}: HTTP {r.status_code} {data[-120:]!r}")
                    done[0] += 1
                except httpx.HTTPError as e:
                    failures.append(f"{model}: {e!r}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMERS)]
    for t in threads:
        t.start()
    slow, wrong = [], []
    try:
        time.sleep(1)
        names = sorted(bodies)
        with live_server.admin() as admin:
            for i in range(BAD):
                kind = names[i % len(names)]
                t0 = time.monotonic()
                r = admin.post("/admin/adapters", json={"name": f"bad-{kind}", **bodies[kind]})
                took = time.monotonic() - t0
                if took > 1.0:
                    slow.append((kind, round(took, 2)))
                if not (400 <= r.status_code < 500 and set(r.json()["error"]) == {"message", "type", "param", "code"}):
                    wrong.append((kind, r.status_code, r.text[:200]))
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not wrong, wrong[:5]
    assert not slow, slow[:10]
    assert not failures, failures[:5]
    assert done[0] >= STREAMERS
    with live_server.admin() as admin:
        served = {v["id"] for v in admin.get("/admin/variants").json()["variants"]}
    assert not any(s.startswith("bad-") for s in served)


def test_a_build_runs_as_a_job_and_a_cancelled_one_never_serves(live_server):
    from safegene_runtime.testing.tiny import make_random_lora

    for name, seed in (("job-a", 71), ("job-b", 72)):
        if not (live_server.adapter_root / name).exists():
            make_random_lora(live_server.adapter_root / name, live_server.family["base"], rank=8, seed=seed)
    body = {"coefficients": {"layers": {"1": 1.0}, "default": 0.5}}
    with live_server.admin() as admin:
        first = admin.post("/admin/adapters?wait=false", json={"name": "job-a", "path": "job-a", **body})
        second = admin.post("/admin/adapters?wait=false", json={"name": "job-b", "path": "job-b", **body})
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        a, b = first.json()["job"]["id"], second.json()["job"]["id"]
        cancelled = admin.delete(f"/admin/jobs/{b}")  # queued behind the first (one build at a time)
        assert cancelled.status_code == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {j: admin.get(f"/admin/jobs/{j}").json()["state"] for j in (a, b)}
            if states[a] in ("done", "failed") and states[b] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.2)
        assert states == {a: "done", b: "cancelled"}, states
        assert admin.get(f"/admin/jobs/{a}").json()["result"]["status"] == "added"
        assert any(j["id"] == a for j in admin.get("/admin/jobs").json()["jobs"])
        _missing = admin.get("/admin/jobs/job-0-nope")
        assert _missing.status_code == 404 and _missing.json()["error"]["code"] == "not_found"
        served = {v["id"] for v in admin.get("/admin/variants").json()["variants"]}
    assert {"job-a", "job-a+safegene"} <= served and not served & {"job-b", "job-b+safegene"}
