"""Fast checks of the benchmark scripts' pure parts (statistics, ratios, argument parsing). No server is started:
the benchmarks themselves are run by hand (docs/benchmarks.md), not timed in the test suite."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench._common import median, percentile, ratio, summarize
from bench.serving import (RunResult, _json_safe, aggregate, compute_ratios, default_configs,
                           ours_config, parse_args, round_order, vllm_argv)


def test_percentile_matches_linear_interpolation():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 95) == pytest.approx(4.8)  # numpy.percentile([1..5], 95) == 4.8
    assert percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_median_ratio_summarize_handle_missing_values():
    assert median([3, float("nan"), 1, 2]) == 2
    assert math.isnan(median([]))
    assert ratio(1.0, 2.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(float("nan"), 1.0))
    s = summarize([0.1, 0.2, 0.3])
    assert s["n"] == 3 and s["p50"] == pytest.approx(0.2) and s["mean"] == pytest.approx(0.2)


def _run(config: str, rnd: int, tokens: int, wall: float, e2e: list[float], ttft: list[float] | None = None):
    r = RunResult(config=config, round=rnd, wall_s=wall)
    r.e2e_s, r.ttft_s, r.tokens = list(e2e), list(ttft or [x / 10 for x in e2e]), [tokens // len(e2e)] * len(e2e)
    return r


def test_ratios_are_same_round_medians_with_targets():
    per_round = {
        "vllm": {0: _run("vllm", 0, 1000, 10.0, [1.0, 1.0]), 1: _run("vllm", 1, 1000, 5.0, [0.5, 0.5])},
        "ours": {0: _run("ours", 0, 1000, 10.2, [1.004, 1.004]), 1: _run("ours", 1, 1000, 5.1, [0.503, 0.503])},
        "ours_safe": {0: _run("ours_safe", 0, 1000, 12.0, [1.2, 1.2]), 1: _run("ours_safe", 1, 1000, 6.0, [0.6, 0.6])},
    }
    by_name = {r["name"]: r for r in compute_ratios(per_round)}
    ba = by_name["b/a throughput"]
    # both rounds: b is 2% slower than a in the same round, although a's absolute speed doubled between rounds
    assert ba["value"] == pytest.approx(1 / 1.02) and ba["met"] is True
    added = by_name["b-a added p50 latency (ms)"]
    assert added["value"] == pytest.approx(3.5) and added["met"] is True
    cb = by_name["c/b throughput (safe / plain, same engine rank)"]
    assert cb["value"] == pytest.approx(10.2 / 12.0) and cb["met"] is None  # informative: no target
    assert not any(n.startswith("d/b") for n in by_name)  # no ours_judged runs: no ratio, not a made-up one


def test_failed_round_has_no_throughput():
    r = _run("vllm", 0, 100, 1.0, [0.5])
    assert r.throughput == 100
    r.errors.append("HTTP 500")
    assert math.isnan(r.throughput)
    agg = aggregate([r, _run("vllm", 1, 300, 1.0, [0.5])])
    assert agg["throughput_tok_s"] == 300 and agg["errors"] == 1


def test_round_order_rotates_and_keeps_every_config():
    cfgs = ["a", "b", "c", "d"]
    orders = [round_order(cfgs, r) for r in range(4)]
    assert orders[0] == cfgs and orders[1] == ["b", "c", "d", "a"]
    assert all(sorted(o) == cfgs for o in orders)
    assert [o[0] for o in orders] == cfgs  # each goes first once


def test_parse_args_defaults_and_validation(capsys):
    a = parse_args([])
    assert a.model == "tiny" and a.configs == default_configs() and a.dtype == "float32" and a.task_rank == 8
    assert "ours_merged" in a.configs
    s = parse_args(["--model", "smollm2", "--configs", "ours_safe,vllm", "--task-rank", "16"])
    assert s.configs == ["vllm", "ours_safe"]  # canonical order
    assert s.dtype == "auto" and s.safety_rank == 16 and s.max_model_len == 1024
    with pytest.raises(SystemExit):
        parse_args(["--configs", "vllm,nope"])
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--clients", "0"])


@pytest.mark.parametrize("argv", [["--extra-engine-arg=--max-num-batched-tokens=2048"],
                                  ["--compile", "--gpu-memory-utilization", "0.12", "--kv-cache", "1G"]])
def test_engine_flags_are_the_same_for_vllm_and_ours(tmp_path, argv):
    import yaml

    from server.config import load_config
    from server.engine import engine_argv

    args = parse_args(argv)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    assets = {"base": base, "adapter_root": tmp_path, "task": tmp_path / "t", "safety": tmp_path / "s",
              "coefficients": tmp_path / "c.json", "rank_equal": 16, "rank_task": 8}
    plain = vllm_argv(args, base, 1234, lora=assets["task"], rank=16)
    cfg_path = ours_config(args, assets, tmp_path, 1235, judges=True, label="x")
    raw = yaml.safe_load(cfg_path.read_text())
    assert raw["judges"]["names"] == ["refusal", "prompt_harm"] and raw["engine"]["max_lora_rank"] == 16
    ours = engine_argv(load_config(cfg_path), 16, 2)

    def flags(argv: list[str]) -> dict[str, str]:
        out, i = {}, 0
        while i < len(argv):
            if argv[i].startswith("--"):
                key, _, val = argv[i].partition("=")
                if not val and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    val, i = argv[i + 1], i + 1
                out[key] = val
            i += 1
        return out

    p, o = flags(plain), flags(ours)
    for key in ("--dtype", "--max-model-len", "--max-num-seqs", "--seed", "--max-lora-rank", "--max-loras",
                "--max-cpu-loras", "--enforce-eager", "--max-num-batched-tokens", "--enable-lora",
                "--kv-cache-memory-bytes", "--gpu-memory-utilization"):
        assert p.get(key) == o.get(key), key
    assert ("--enforce-eager" in p) == (not args.compile)
    assert p["--kv-cache-memory-bytes"] == args.kv_cache


def test_ours_merged_config_serves_the_safe_variant_merged(tmp_path):
    from server.config import load_config

    args = parse_args(["--configs", "ours_merged"])
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    assets = {"base": base, "adapter_root": tmp_path, "task": tmp_path / "t", "safety": tmp_path / "s",
              "coefficients": tmp_path / "c.json", "rank_equal": 16, "rank_task": 8}
    cfg = load_config(ours_config(args, assets, tmp_path, 1236, judges=False, label="m", safe_merged=True))
    (task,) = cfg.tasks
    assert task.mode_of("safe") == "merged" and task.mode_of("plain") == "lora"


def test_markdown_report_from_a_saved_result():
    from bench.serving import markdown_report

    runs = {"vllm": [_run("vllm", 0, 640, 10.0, [1.0, 1.2])], "ours": [_run("ours", 0, 640, 10.5, [1.1, 1.2])]}
    per_round = {c: {r.round: r for r in rs} for c, rs in runs.items()}
    result = _json_safe({
        "command": "python bench/serving.py", "created": "now",
        "workload": {"clients": 2, "requests": 2, "max_tokens": 64, "rounds": 1, "warmups": 1, "driver": "vllm"},
        "engine": {"max_lora_rank_equal": 32, "max_lora_rank_task": 16, "dtype": "float32",
                   "cpu_lora_kernels": "grouped"},
        "load_average": {"median": 1.0, "max": float("nan")},
        "configs": {c: aggregate(rs) for c, rs in sorted(runs.items())},
        "ratios": compute_ratios(per_round)})
    text = markdown_report(result)
    assert text.index("| `vllm`") < text.index("| `ours`")  # canonical order, not the file's sorted keys
    assert "| b/a throughput | 0.952 | 0.952 | >= 0.97 | **no** |" in text
    assert "max n/a" in text


def test_json_safe_replaces_nan():
    assert _json_safe({"a": [1.0, float("nan")], "b": {"c": float("inf")}}) == {"a": [1.0, None], "b": {"c": None}}


def test_gate_demo_registers_the_task_with_its_validation_items_as_the_gates_task_shots(tmp_path):
    """bench/gate_demo.py's handoff: the body names the file of the task's validation items (``task-<t>-val``),
    written under the adapter root, where the registry takes a registration's ``gate.task`` from."""
    from bench.gate_demo import registration_body
    from experiments.smollm2.tasks import generate_val, write_val
    from safegene_runtime.datasets import load_file
    from server.build import under_root

    root = tmp_path / "assets"
    entry = {"name": "topic", "path": str(root / "tasks" / "topic"), "variants": ["plain", "safe"],
             "coefficients": str(root / "tasks" / "topic" / "coefficients.json")}
    shots_dir = root / ".gate-demo-x"  # what register() makes with tempfile under the adapter root
    shots_dir.mkdir(parents=True)
    body = registration_body(entry, write_val("topic", shots_dir))
    assert body == {"name": "topic", "path": entry["path"], "version": "gate-bench", "variants": ["plain", "safe"],
                    "coefficients": entry["coefficients"], "gate": {"task": str(shots_dir / "topic-val.jsonl")}}
    shots = load_file(body["gate"]["task"], kind="task")
    assert under_root(Path(body["gate"]["task"]), root)
    assert [(it.prompt, it.answer) for it in shots] == [(r["prompt"], r["answer"]) for r in generate_val("topic")]


def test_gate_demo_calibrate_registers_align_train_shots_and_the_default_procedure(tmp_path):
    """``bench/gate_demo.py --calibrate``: the body carries a calibrate block (no coefficients) that the server's
    parser accepts with the default procedure, and its shots are align-train prompts, none in a validation or test
    set (a gate run measured on validation must not calibrate on it)."""
    from bench.gate_demo import registration_body, write_shots
    from experiments.smollm2.tasks import write_val
    from safegene_runtime.calibration import CalibrationConfig
    from safegene_runtime.datasets import NAMED_SETS, SET_FAMILY, TEST, VALIDATION, load_file, load_named
    from server.config import parse_task

    root = tmp_path / "assets"
    (root / "tasks" / "reverse").mkdir(parents=True)
    entry = {"name": "reverse", "path": str(root / "tasks" / "reverse"), "variants": ["plain", "safe"],
             "coefficients": str(root / "tasks" / "reverse" / "coefficients.json")}
    shots_dir = root / ".gate-demo-x"
    shots_dir.mkdir()
    body = registration_body(entry, write_val("reverse", shots_dir), calibrate=write_shots("reverse", shots_dir))
    assert "coefficients" not in body and body["version"] == "gate-bench-calibrate"
    spec = parse_task({k: v for k, v in body.items() if k != "gate"}, root, "body")  # the registry takes gate apart
    assert spec.calibrate is not None and spec.calibrate.config == CalibrationConfig()
    held = {p for n, f in SET_FAMILY.items() if f in (VALIDATION, TEST) and n in NAMED_SETS
            for p in load_named(n).prompts}
    for key in ("harmful", "task_shots", "benign"):
        prompts = load_file(body["calibrate"][key]).prompts
        assert len(prompts) == 16 and not set(prompts) & held, key


def test_merged_bf16_rule_accepts_rounding_and_near_ties_and_catches_a_changed_token():
    """bench/merged_bf16.py's rule: equal up to bf16 rounding, a part only at a near tie of the merged engine."""
    from bench.merged_bf16 import PREFIX_MEAN_NATS, TIE_NATS, compare

    ref = [("Sure", -0.1, {"Sure": -0.1, "I": -0.3}), (",", -0.2, {",": -0.2})]
    assert compare(ref, [("Sure", -0.12, {}), (",", -0.21, {})])[0]  # rounding along the whole reply
    assert compare(ref, [("I", -0.3, {}), ("'m", -0.1, {})])[0]  # parts at a tie (gap 0.2 < TIE_NATS)
    far = [("Sure", -0.1, {"Sure": -0.1, "I": -0.1 - TIE_NATS - 0.1})]
    ok, why = compare(far, [("I", -0.8, {})])
    assert not ok and "gap" in why
    ok, why = compare(ref, [("<eos>", -0.4, {})])  # a token outside the merged engine's top-k
    assert not ok and "not in the merged engine's top" in why
    ok, why = compare(ref, [("Sure", -0.1 - 2 * PREFIX_MEAN_NATS - 0.1, {}), (",", -0.2, {})])
    assert not ok and "mean" in why
