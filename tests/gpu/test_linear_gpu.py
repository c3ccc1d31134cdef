"""PTPC-FP8 linear ops on the GPU at Llama-3-8B sizes: every provider vs the torch reference.

    python -m pytest tests/gpu/test_linear_gpu.py -q -x

Runs in well under a minute on an H100 (the first Triton calls autotune). Skipped without a GPU.
"""

import pytest
import torch

from rocm_attn.kernels import fp8_dtype, fp8_max, get_platform, use_kernels
from rocm_attn.kernels.ptpc_scaled_mm import scaled_mm_fallback
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.testing import rel_err

DEV = "cuda"
LLAMA_KN = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
MS = [1, 16, 128, 4096]


def gpu_providers():
    plat = get_platform()
    return ["torch", "triton"] + (["aiter"] if plat.aiter_available else [])


def close_bf16(out, ref):
    """bf16 output of an fp32-accumulated GEMM: a few bf16 ulps of the largest value."""
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    out = {}
    for K, N in LLAMA_KN:
        w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16) * 0.02
        out[K, N] = (w, *quantize_weight_per_channel(w), torch.randn(N, device=DEV, dtype=torch.bfloat16))
    return out


@pytest.mark.parametrize("K,N", LLAMA_KN)
@pytest.mark.parametrize("M", MS)
def test_ptpc_scaled_mm(weights, K, N, M):
    _, wq, w_scale, bias = weights[K, N]
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    ref = scaled_mm_fallback(xq, x_scale, wq, w_scale, bias, torch.float32)
    for provider in gpu_providers() + ["auto"]:
        with use_kernels(provider):
            out = torch.ops.rocm_attn.ptpc_scaled_mm(xq, x_scale, wq, w_scale, bias)
        assert out.dtype == torch.bfloat16, provider
        close_bf16(out, ref)


@pytest.mark.parametrize("K,N", LLAMA_KN)
@pytest.mark.parametrize("M", MS)
def test_ptpc_linear(weights, K, N, M):
    w, wq, w_scale, bias = weights[K, N]
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    with use_kernels("torch"):
        xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    ref = scaled_mm_fallback(xq, x_scale, wq, w_scale, bias, torch.float32)
    for provider in gpu_providers() + ["auto"]:
        with use_kernels(provider):
            out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)
        close_bf16(out, ref)
    # the accuracy target against the unquantized product
    exact = x.double() @ w.double().t() + bias.double()
    assert rel_err(out, exact) < 5e-2


def test_ptpc_linear_leading_dims_odd_shapes():
    w = torch.randn(72, 200, device=DEV)  # K, N not multiples of 16: the fallbacks
    wq, w_scale = quantize_weight_per_channel(w)
    x = torch.randn(3, 7, 200, device=DEV, dtype=torch.bfloat16)
    with use_kernels("torch"):
        ref = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale).float()
    for provider in gpu_providers() + ["auto"]:
        with use_kernels(provider):
            out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale)
        assert out.shape == (3, 7, 72)
        close_bf16(out, ref)
    for M in (0, 100):  # empty batch; the tiled GEMM at an odd M
        xm = torch.randn(M, 200, device=DEV, dtype=torch.float16)
        with use_kernels("triton"):
            out = torch.ops.rocm_attn.ptpc_linear(xm, wq, w_scale)
        with use_kernels("torch"):
            ref = torch.ops.rocm_attn.ptpc_linear(xm, wq, w_scale)
        assert out.shape == (M, 72)
        if M:
            torch.testing.assert_close(out.float(), ref.float(), rtol=2e-3, atol=2e-3 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M,K", [(1, 4096), (4096, 4096), (333, 14336), (8, 20000)])
def test_per_token_quant_triton_exact(dtype, M, K):
    x = torch.randn(M, K, device=DEV).to(dtype)
    x[0, 5] = 1000.0
    if M > 2:
        x[2] = 0
    with use_kernels("torch"):
        q_ref, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
    with use_kernels("triton"):
        q, s = torch.ops.rocm_attn.per_token_quant_fp8(x)
    assert q.dtype == fp8_dtype()
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def _check_quant_close(q, s, q_ref, s_ref):
    """Triton vs torch fused quant: reduction order and rsqrt differ in the last bit, so a
    few elements may land one fp8 step away; scales agree to a bf16 rounding."""
    torch.testing.assert_close(s, s_ref, rtol=1e-2, atol=0)
    diff = (q.float() - q_ref.float()).abs() / q_ref.float().abs().clamp_min(2.0 ** -6)
    assert diff.max() <= 0.13 and (diff > 0).float().mean() < 0.02


@pytest.mark.parametrize("M", [1, 16, 4096])
def test_fused_quant_ops(M):
    K, N = 4096, 14336
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    r = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    w = (torch.rand(K, device=DEV) + 0.5).to(torch.bfloat16)
    gu = torch.randn(M, 2 * N, device=DEV, dtype=torch.bfloat16)
    results = {}
    for provider in ("torch", "triton"):
        with use_kernels(provider):
            results[provider] = (
                torch.ops.rocm_attn.rms_norm_quant_fp8(x, w, 1e-5),
                torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8(x, r, w, 1e-5),
                torch.ops.rocm_attn.silu_mul_quant_fp8(gu),
            )
    (a1, a2, a3), (b1, b2, b3) = results["torch"], results["triton"]
    _check_quant_close(*b1, *a1)
    _check_quant_close(*b2[:2], *a2[:2])
    assert torch.equal(b2[2], a2[2])
    _check_quant_close(*b3, *a3)


def test_fp8_format_matches_platform():
    assert fp8_max() == float(torch.finfo(fp8_dtype()).max)
