"""The engine dtype follows the CPU: bf16 only with native bf16 arithmetic (server/hardware.py)."""

from __future__ import annotations

import pytest

from server import hardware


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(hardware, "on_gpu", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))

    return set_flags


def test_auto_is_bf16_only_with_native_bf16(cpu, monkeypatch):
    cpu("avx2", "avx512f", "avx512_bf16")
    assert hardware.engine_dtype("auto") == "bfloat16"
    cpu("avx2", "fma")
    assert hardware.engine_dtype("auto") == "float32"
    cpu("amx_bf16", "amx_tile")
    assert hardware.engine_dtype("auto") == "bfloat16"


def test_an_isa_cap_counts_as_no_bf16(cpu, monkeypatch):
    cpu("avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.engine_dtype("auto") == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert hardware.engine_dtype("auto") == "bfloat16"


def test_explicit_dtype_and_gpu_keep_what_was_asked(cpu, monkeypatch):
    cpu("avx2")
    assert hardware.engine_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(hardware, "on_gpu", lambda: True)
    assert hardware.engine_dtype("auto") == "auto"


def test_cpu_flags_reads_this_machine():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: /proc/cpuinfo lists at least the baseline x86-64 or Arm features
        assert any(f in flags for f in ("sse2", "fp", "asimd", "avx2"))


def test_threads_bind_gives_small_hosts_every_core(monkeypatch):
    monkeypatch.setattr(hardware, "usable_cpus", lambda: [0, 1])
    assert hardware.threads_bind("auto") == "0,1" and hardware.threads_bind("all") == "0,1"
    assert hardware.threads_bind("vllm") is None
    monkeypatch.setattr(hardware, "usable_cpus", lambda: list(range(16)))
    assert hardware.threads_bind("auto") is None  # big hosts keep vLLM's binding (a core for the front end)
    assert hardware.threads_bind("all") == ",".join(map(str, range(16)))
