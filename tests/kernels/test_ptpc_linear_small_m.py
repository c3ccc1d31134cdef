"""The one-launch small-M ptpc_linear (kernels/triton_kernels/ptpc_gemm_small_m.py, FUSE_QUANT).

Under the interpreter the fused kernel must give exactly what the two launches give (the Triton
quant kernel, then the small-M GEMM with the same tile) when it prefetches one tile: the same fp8
values, scales and summation order (a longer prefetch sums the same products in another order). Against an independent fp64 reference it is checked on rows whose quantization
is exact (the interpreter's fp32 -> fp8 cast rounds some other values wrongly; REFERENCE.md).
"""

import pytest
import torch
from rocm_attn.kernels import fp8_max, use_kernels
from rocm_attn.kernels import ptpc_linear as ptpc_linear_module
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.triton_kernels import ptpc_gemm_small_m as small_m
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch

from .test_ptpc_linear import grid_exact_input, reference


def two_launches(x, wq, w_scale, bias, config):
    xq, x_scale = per_token_quant_fp8_launch(x, wq.dtype, fp8_max(wq.dtype))
    return small_m.ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, x.dtype, config=config)


@pytest.mark.parametrize("M,K", [(1, 32), (3, 70), (16, 128), (4, 2100)])  # 2100: two quant chunks, masked
@pytest.mark.parametrize("split_k,prefetch_k", [(1, 32), (1, 64), (2, 32), (3, 64), (1, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_equals_two_launches(M, K, split_k, prefetch_k, dtype):
    gen = torch.Generator().manual_seed(M * 1000 + K)
    x = torch.randn(M, K, generator=gen).to(dtype)
    x[0, 1] = 300.0  # an outlier: the row's scale is set by it
    wq, w_scale = quantize_weight_per_channel(torch.randn(40, K, generator=gen))
    bias = torch.randn(40, generator=gen)
    config = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": split_k}
    want = two_launches(x, wq, w_scale, bias, config)
    got = small_m.ptpc_linear_small_m_launch(x, wq, w_scale, bias, fp8_max(wq.dtype),
                                             config=dict(config, PREFETCH_K=prefetch_k))
    assert got.dtype == dtype and got.shape == (M, 40)
    if prefetch_k == config["BLOCK_K"]:  # the same tiles in the same order: the same bits
        assert torch.equal(got, want)
    else:  # the prefetched slice is one longer dot: fp32 sums in another order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("M", [1, 7, 16])
def test_fused_matches_fp64_reference(M):
    x = grid_exact_input(M, 96, torch.float32)
    x[M // 2] = 0.0  # a zero row: finite (floor) scale, zero output
    wq, w_scale = quantize_weight_per_channel(torch.randn(48, 96))
    bias = torch.randn(48)
    out = small_m.ptpc_linear_small_m_launch(x, wq, w_scale, bias, fp8_max(wq.dtype))
    ref = reference(x, wq, w_scale, bias)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(out[M // 2], bias)


def test_prefetch_must_keep_tiles_aligned():
    x = torch.randn(2, 64)
    wq, w_scale = quantize_weight_per_channel(torch.randn(32, 64))
    with pytest.raises(ValueError, match="PREFETCH_K=48 must be a multiple of BLOCK_K=32"):
        small_m.ptpc_linear_small_m_launch(x, wq, w_scale, None, fp8_max(wq.dtype),
                                           config={"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1, "PREFETCH_K": 48})


def test_sync_counters_back_to_zero():
    """The last program resets both counts, so the next call (or a CUDA-graph replay) starts at zero."""
    x = torch.randn(5, 64)
    wq, w_scale = quantize_weight_per_channel(torch.randn(32, 64))
    for _ in range(2):
        small_m.ptpc_linear_small_m_launch(x, wq, w_scale, None, fp8_max(wq.dtype))
        counters = small_m._counters(x.device, 4)
        assert int(counters.abs().sum()) == 0


def test_ptpc_linear_takes_the_fused_path_at_small_m(monkeypatch):
    calls = []
    real = small_m.ptpc_linear_small_m_launch
    monkeypatch.setattr(small_m, "ptpc_linear_small_m_launch", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    wq, w_scale = quantize_weight_per_channel(torch.randn(32, 64))
    with use_kernels("triton"):
        for M in (1, 16, 17):
            torch.ops.rocm_attn.ptpc_linear(torch.randn(M, 64), wq, w_scale)
        torch.ops.rocm_attn.ptpc_linear(torch.randn(2, 8, 64), wq, w_scale)  # 16 rows in leading dims
    assert calls == [1, 16, 16]
    with use_kernels("torch"):
        torch.ops.rocm_attn.ptpc_linear(torch.randn(4, 64), wq, w_scale)
    assert calls == [1, 16, 16]


def test_ptpc_linear_falls_back_to_two_launches_without_counters(monkeypatch):
    """Inside a CUDA-graph capture with every counter slot taken, the fused kernel cannot run: the
    provider then quantizes and multiplies in two launches (same answer), it does not fail."""
    x = torch.randn(6, 64)
    wq, w_scale = quantize_weight_per_channel(torch.randn(32, 64))
    with use_kernels("triton"):
        want = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale)
        monkeypatch.setattr(small_m, "_counters", lambda device, n: None)
        assert small_m.ptpc_linear_small_m_launch(x, wq, w_scale, None, fp8_max(wq.dtype)) is None
        got = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale)
    assert torch.equal(got, want)


def test_fused_small_m_max_zero_turns_it_off(monkeypatch):
    monkeypatch.setattr(ptpc_linear_module, "FUSED_SMALL_M_MAX", 0)
    monkeypatch.setattr(small_m, "ptpc_linear_small_m_launch", lambda *a, **k: pytest.fail("fused path taken"))
    wq, w_scale = quantize_weight_per_channel(torch.randn(32, 64))
    with use_kernels("triton"):
        torch.ops.rocm_attn.ptpc_linear(torch.randn(2, 64), wq, w_scale)
