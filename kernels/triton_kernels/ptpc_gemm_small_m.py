"""Triton small-M (decode) kernel for ptpc_scaled_mm and ptpc_linear: weight-bandwidth bound.

At M <= 64 the GEMM reads the [N, K] fp8 weight once and does little math, so the goal is
to stream the weight at near-copy bandwidth. Each program owns BLOCK_N output channels and
walks all of K (no split-K: one launch, no workspace, no atomics); small BLOCK_N gives
enough programs to fill the GPU (N / 16 >= 256 for Llama shapes). The M rows (padded to
BLOCK_M >= 16 for tl.dot) are tiny and re-read from L2 by every program.

QUANTIZE_X (ptpc_linear): x is the bf16/fp16/fp32 activation; each program first computes
its rows' amax (a pass over x, from L2), then quantizes each x tile to fp8 on the fly
before the dot: quant + GEMM in one launch, the same math as per_token_quant_fp8 followed
by ptpc_scaled_mm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from .ptpc_gemm import prepare_operands

CONFIGS = [
    triton.Config({"BLOCK_N": 16, "BLOCK_K": 256}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_N": 16, "BLOCK_K": 512}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 256}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 128}, num_stages=5, num_warps=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_stages=4, num_warps=4),
]
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32}
MAX_M = 64


@triton.jit
def _ptpc_gemm_small_m_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om,
    FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    QUANTIZE_X: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    cols = (offs_n % N).to(tl.int64)  # wrap: valid memory, discarded at the store
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_cols = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]

    if QUANTIZE_X:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        # IEEE division (div_rn), as torch does: Triton's `/` is approximate (div.full.f32)
        x_scale = tl.maximum(tl.math.div_rn(amax, tl.zeros_like(amax) + FP8_MAX), SCALE_FLOOR)
    else:
        x_scale = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_cols + k0)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + k0, mask=k_ok[:, None], other=0.0)
        if QUANTIZE_X:
            xf = tl.math.div_rn(x.to(tl.float32), tl.broadcast_to(x_scale[:, None], (BLOCK_M, BLOCK_K)))
            xf = tl.clamp(xf, -FP8_MAX, FP8_MAX)
            x = xf.to(w_ptr.dtype.element_ty)
        acc = tl.dot(x, w, acc)

    w_scale = tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)
    acc = acc * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
_kernel_fixed = _even_k(_ptpc_gemm_small_m_kernel)
_kernel_tuned = triton.autotune(configs=CONFIGS, key=["N", "K", "M_BUCKET", "QUANTIZE_X"])(
    _even_k(_ptpc_gemm_small_m_kernel)
)


def _launch(x, xs, wq, ws, bias, out, quantize_x, fp8_max):
    M, K = x.shape
    N = wq.shape[0]
    if M > MAX_M:
        raise ValueError(f"the small-M kernel takes M <= {MAX_M}, got M = {M}")
    block_m = max(16, triton.next_power_of_2(M))  # tl.dot needs >= 16 rows
    args = (x, xs, wq, ws, bias if bias is not None else ws, out, M, N, K, block_m,
            x.stride(0), wq.stride(0), out.stride(0))
    consts = dict(FP8_MAX=fp8_max, SCALE_FLOOR=1.0 / (fp8_max * 512.0), QUANTIZE_X=quantize_x,
                  HAS_BIAS=bias is not None, BLOCK_M=block_m)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]),)

    if triton_interpret():
        _kernel_fixed[grid](*args, **consts, **INTERPRET_CONFIG)
    else:
        _kernel_tuned[grid](*args, **consts)
    return out


def ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, out_dtype):
    """ptpc_scaled_mm for M <= 64: xq fp8 [M, K] with x_scale [M, 1]."""
    from ..platform import fp8_max as platform_fp8_max

    ops, out = prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype)
    if ops is None:
        return out
    xq, xs, wq, ws, bias = ops
    return _launch(xq, xs, wq, ws, bias, out, False, platform_fp8_max(wq.dtype))


def ptpc_linear_small_m_launch(x, wq, w_scale, bias, fp8_max):
    """ptpc_linear for M <= 64 in one launch: x [M, K] float, quantized per row on the fly."""
    M, K = x.shape
    N = wq.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        out.copy_(bias.to(x.dtype).expand(M, N) if bias is not None else torch.zeros_like(out))
        return out
    x = x if x.stride(-1) == 1 else x.contiguous()
    wq = wq if wq.stride(-1) == 1 else wq.contiguous()
    ws = w_scale.reshape(N).contiguous()
    bias = bias.contiguous() if bias is not None else None
    return _launch(x, ws, wq, ws, bias, out, True, fp8_max)
