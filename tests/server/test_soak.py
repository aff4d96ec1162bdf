"""64 concurrent clients for 60 s against a safe variant (the session's live_server, loopback): no request fails.

Prints the request count and the end-to-end p50/p95 (docs/deploy.md quotes a run). Bounded: 60 s of load, then the
requests in flight finish.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench._common import percentile

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CLIENTS = 64
SECONDS = 60.0


async def _soak(root_url: str, key: str, model: str) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=CLIENTS + 4, max_keepalive_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=root_url, timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def one_client(i: int) -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    async with client.stream("POST", "/v1/chat/completions", json={
                            "model": model, "max_tokens": 16, "stream": True, "ignore_eos": True, "temperature": 0,
                            "messages": [{"role": "user", "content": f"Client {i}: tell me about tides."}]}) as r:
                        data = b"".join([c async for c in r.aiter_bytes()])
                    if r.status_code != 200 or b"[DONE]" not in data or b'"error"' in data:
                        errors.append(f"HTTP {r.status_code}: {data[-160:]!r}")
                    else:
                        latencies.append(time.monotonic() - t0)
                except httpx.HTTPError as e:
                    errors.append(repr(e))

        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
    return latencies, errors


def test_64_clients_for_60_seconds_against_the_safe_variant(live_server):
    latencies, errors = asyncio.run(_soak(live_server.root_url, live_server.api_key, "alpha+safegene"))
    print(f"\n[soak] {CLIENTS} clients x {SECONDS:.0f} s on alpha+safegene: {len(latencies)} requests, "
          f"{len(errors)} errors, end-to-end p50 {percentile(latencies, 50):.2f} s, "
          f"p95 {percentile(latencies, 95):.2f} s")
    assert not errors, errors[:5]
    assert len(latencies) >= CLIENTS
