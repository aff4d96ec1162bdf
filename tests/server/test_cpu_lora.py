"""The grouped CPU LoRA ops (server/cpu_lora.py) compute what vLLM's torch ops compute, and give base-model tokens
(LoRA index -1) no LoRA where the stock ops apply the adapter in the last slot."""

from __future__ import annotations

import pytest
import torch

from server import cpu_lora as G

stock = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

IN, OUT, RANK, SLOTS = 64, 96, 8, 4
CASES = {
    "one adapter": [2] * 9,
    "mixed": [1, 0, 1, 3, 0, 1, 3],
    "one token": [3],
}


def _weights(dtype, last_slot_zero=True):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=g).to(dtype)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=g).to(dtype)
    if last_slot_zero:
        a[-1], b[-1] = 0, 0
    return a, b


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_ops_equal_vllms(dtype, tol, case):
    idx = torch.tensor(CASES[case])
    x = torch.randn(len(idx), IN, generator=torch.Generator().manual_seed(1)).to(dtype)
    a, b = _weights(dtype)
    for add in (True, False):
        y_s, y_g = torch.zeros(len(idx), RANK), torch.zeros(len(idx), RANK)  # shrink buffers are float32
        stock.bgmv_shrink(x, a, y_s, idx, 0.5)
        G.bgmv_shrink(x, a, y_g, idx, 0.5)
        torch.testing.assert_close(y_g, y_s, rtol=tol, atol=tol)
        out_s = torch.randn(len(idx), OUT + 8, generator=torch.Generator().manual_seed(2)).to(dtype)
        out_g = out_s.clone()
        stock.bgmv_expand(y_s, b, out_s, idx, add)
        G.bgmv_expand(y_g, b, out_g, idx, add)
        torch.testing.assert_close(out_g.float(), out_s.float(), rtol=tol, atol=tol * 10)
        sl_s = torch.randn(len(idx), 3 * OUT, generator=torch.Generator().manual_seed(3)).to(dtype)
        sl_g = sl_s.clone()
        stock.bgmv_expand_slice(y_s, b, sl_s, idx, OUT, OUT, add)
        G.bgmv_expand_slice(y_g, b, sl_g, idx, OUT, OUT, add)
        torch.testing.assert_close(sl_g.float(), sl_s.float(), rtol=tol, atol=tol * 10)


def test_prefill_ops_expand_per_sequence_indices():
    # sgmv: one LoRA index per sequence, repeated over its tokens
    seq_lens, loras = torch.tensor([3, 1, 4]), torch.tensor([0, 2, 0])
    x = torch.randn(8, IN)
    a, b = _weights(torch.float32)
    y_s, y_g = torch.zeros(8, RANK), torch.zeros(8, RANK)
    meta = (torch.tensor([0, 3, 4]), seq_lens, loras, 3, 4, 8)
    stock.sgmv_shrink(x, a, y_s, *meta, 1.0)
    G.sgmv_shrink(x, a, y_g, *meta, 1.0)
    torch.testing.assert_close(y_g, y_s)
    o_s, o_g = torch.zeros(8, OUT), torch.zeros(8, OUT)
    stock.sgmv_expand_slice(y_s, b, o_s, *meta, 0, OUT, True)
    G.sgmv_expand_slice(y_g, b, o_g, *meta, 0, OUT, True)
    torch.testing.assert_close(o_g, o_s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o_g[3], y_g[3] @ b[2, 0].t())  # the second sequence used slot 2


def test_base_tokens_get_no_lora_even_when_the_last_slot_is_taken():
    idx = torch.tensor([0, -1, 0, -1])
    x = torch.randn(4, IN)
    a, _ = _weights(torch.float32, last_slot_zero=False)
    y_s, y_g = torch.zeros(4, RANK), torch.zeros(4, RANK)
    stock.bgmv_shrink(x, a, y_s, idx, 1.0)
    G.bgmv_shrink(x, a, y_g, idx, 1.0)
    assert torch.count_nonzero(y_g[[1, 3]]) == 0  # base-model rows: no LoRA
    assert torch.count_nonzero(y_s[[1, 3]]) > 0  # vLLM's ops apply the last slot's adapter to them
    torch.testing.assert_close(y_g[[0, 2]], y_s[[0, 2]])


def test_register_patches_only_when_asked(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu

    monkeypatch.setattr(G, "_PATCHED", False)
    for name in G.OPS:  # restore whatever is there after the test
        monkeypatch.setattr(punica_cpu, name, getattr(punica_cpu, name))
    monkeypatch.setenv(G.ENV, "stock")
    G.register()
    assert punica_cpu.bgmv_shrink is stock.bgmv_shrink
    monkeypatch.setenv(G.ENV, "grouped")
    G.register()
    assert all(getattr(punica_cpu, n) is f for n, f in G.OPS.items())
    monkeypatch.setenv(G.ENV, "fast")
    with pytest.raises(ValueError, match="SAFEGENE_CPU_LORA"):
        G.register()
