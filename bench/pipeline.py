"""Time and peak memory of the method-core steps: extract (stage 1), stack, merge.

    .venv/bin/python bench/pipeline.py             # the tiny test model
    .venv/bin/python bench/pipeline.py --smollm2   # also SmolLM2-135M-Instruct (prepared from the shipped GGUF)

Each step runs in its own subprocess, which reports its wall time and its peak RSS (/proc VmHWM), so the numbers
are not polluted by the setup (building the degraded model loads whole shards). A subprocess that only imports
torch and safegene gives the baseline RSS; "extra" is peak minus that baseline. Extraction streams one tensor pair at
a time, so its extra memory should track the largest fp32 tensor pair (plus SVD workspace), not the model size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _worker(op: str, args: list[str]) -> None:
    """Run one step in this process and print {"seconds", "maxrss_mb"}."""
    import torch  # noqa: F401  (the baseline includes torch)

    from safegene_runtime.coefficients import Coefficients  # noqa: F401
    from safegene_runtime.extract import extract_safety_adapter
    from safegene_runtime.merge import merge_checkpoint
    from safegene_runtime.stack import stack_adapters

    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    if op == "extract":
        import safegene_runtime.extract as ex

        aligned, degraded, out = args
        phases["after imports"] = _rss_mb()
        factorize, save = ex.factorize, ex.save_adapter

        def traced_factorize(delta, **kw):  # the peak is inside the SVD; after it, what stays
            result = factorize(delta, **kw)
            phases["largest after a module"] = max(phases.get("largest after a module", 0.0), _rss_mb())
            return result

        def traced_save(*a, **k):
            phases["before writing the adapter"] = _rss_mb()
            phases["peak before writing"] = _peak_rss_mb()
            return save(*a, **k)

        ex.factorize, ex.save_adapter = traced_factorize, traced_save
        extract_safety_adapter(aligned, degraded, rank=16, out=out, progress=False)
    elif op == "stack":
        task, safety, out = args
        stack_adapters(Path(task), Path(safety), {"layers": {}, "default": 0.8}, out=Path(out))
    elif op == "merge":
        base, task, safety, out = args
        merge_checkpoint(Path(base), task=Path(task), safety=Path(safety), coefficients={"default": 0.8},
                         out=Path(out), progress=False)
    elif op != "noop":
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": seconds, "maxrss_mb": _peak_rss_mb(), "phases": phases}))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark. /proc's VmHWM belongs to the current address space; ``ru_maxrss`` would
    also carry the parent's peak across fork+exec on Linux, which hid the workers' own numbers."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(op: str, *args: Path | str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--_worker", op, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{op} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def _sizes(model: Path) -> dict:
    from safegene_runtime.checkpoints import Checkpoint

    ck = Checkpoint(model)
    lin = [f"{m}.weight" for m in ck.linear_modules()]
    biggest = max(lin, key=lambda k: ck.shape(k)[0] * ck.shape(k)[1])
    numel = ck.shape(biggest)[0] * ck.shape(biggest)[1]
    return {"model_mb": ck.total_bytes() / 2**20, "largest": biggest, "largest_shape": ck.shape(biggest),
            "pair_fp32_mb": 2 * numel * 4 / 2**20, "dtype": str(ck.dtype(biggest)).removeprefix("torch.")}


def bench(label: str, base: Path, work: Path) -> None:
    from safegene_runtime.testing.tiny import make_perturbed_model, make_random_lora

    degraded = make_perturbed_model(base, work / "degraded")
    task = make_random_lora(work / "task", base, rank=16)
    sz = _sizes(base)
    noop = _run("noop")
    ext = _run("extract", base, degraded, work / "safety")
    # glibc raises its mmap threshold after every large free, so freed SVD workspaces stay on the heap as RSS;
    # a fixed threshold shows how much of the extra is that (same computation, same output)
    fixed = _run("extract", base, degraded, work / "safety-fixed-mmap",
                 env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    stk = _run("stack", task, work / "safety", work / "stacked")
    mrg = _run("merge", base, task, work / "safety", work / "merged")
    print(f"\n== {label}: {base}")
    print(f"model {sz['model_mb']:.1f} MB ({sz['dtype']}); largest linear weight {sz['largest']} {sz['largest_shape']}: "
          f"fp32 A/D pair {sz['pair_fp32_mb']:.1f} MB; baseline process RSS {noop['maxrss_mb']:.0f} MB")
    print(f"{'step':<10}{'seconds':>10}{'peak RSS MB':>14}{'extra MB':>11}{'extra/model':>13}{'extra/pair':>12}")
    for name, r in (("extract", ext), ("extract*", fixed), ("stack", stk), ("merge", mrg)):
        extra = max(r["maxrss_mb"] - noop["maxrss_mb"], 0.0)
        print(f"{name:<10}{r['seconds']:>10.2f}{r['maxrss_mb']:>14.0f}{extra:>11.0f}"
              f"{extra / sz['model_mb']:>13.2f}{extra / sz['pair_fp32_mb']:>12.1f}")
    factors_mb = (work / "safety" / "adapter_model.safetensors").stat().st_size / 2**20
    print(f"(extract*: MALLOC_MMAP_THRESHOLD_=65536.) The safety adapter's factors, held until they are written: "
          f"{factors_mb:.1f} MB")
    for label, r in (("extract", ext), ("extract*", fixed)):
        print(f"{label} RSS by phase, MB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["phases"].items()))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        _worker(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smollm2", action="store_true", help="also benchmark SmolLM2-135M-Instruct")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="safegene-bench-"))
    try:
        from safegene_runtime.testing.tiny import make_tiny_model

        bench("tiny", make_tiny_model(work / "tiny" / "base"), work / "tiny")
        if args.smollm2:
            from safegene_runtime.models import prepare_smollm2

            bench("smollm2", prepare_smollm2(), work / "smollm2")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
