"""Triton tiled FP8 GEMM for ptpc_scaled_mm at large M, scales and bias fused in the epilogue.

    out[m, n] = acc[m, n] * x_scale[m] * w_scale[n] + bias[n],  acc = xq[m, :] . wq[n, :] (fp32)

Grouped tile order (GROUP_M row-tiles share the weight tiles in L2). The weight is read as
[BLOCK_K, BLOCK_N] tiles of wq [N, K] (K contiguous), the K-major operand the fp8 tensor
cores want. Autotuned over a short list of H100-sensible configs, keyed on N, K and a
power-of-two bucket of M.

Accumulation precision: on Hopper an fp8 wgmma adds into its accumulator with only ~14
mantissa bits, and Triton's default lets the whole K loop accumulate that way (it is the
"fast accumulation" of cuBLAS). On sums whose terms share a sign (x correlated with a
weight row) the truncation error piles up to ~6% at K = 4096 - seen on an H100. Each
tl.dot therefore promotes its partial sum into the fp32 accumulator every PROMOTE_K
elements (``max_num_imprecise_acc``), as cuBLAS / CUTLASS do without fast accumulation.
FAST_ACCUM=True (Config.fast_accum) drops the promotion: Triton's own sm_90 default.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from . import launch_cache

# fp8 K elements accumulated in the tensor cores' reduced precision before an fp32 add
PROMOTE_K = 128

CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 256, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8}, num_stages=4, num_warps=4),
]
# Under TRITON_INTERPRET=1 (CPU tests): one small config, no autotuning.
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}


@triton.jit
def grouped_tile(x_ptr, w_ptr, M, N, stride_xm, stride_wn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's [BLOCK_M, BLOCK_N] output tile in grouped order (GROUP_M row-tiles share the weight
    tiles in L2): (offs_m, offs_n, offs_k, x tile pointers [BLOCK_M, BLOCK_K], w tile pointers
    [BLOCK_K, BLOCK_N]) for the first K block."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows/cols wrap around (valid memory, results discarded at the store),
    # so the main loop needs no M/N masks.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]
    return offs_m, offs_n, offs_k, x_ptrs, w_ptrs


@triton.jit
def store_scaled_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, out_ptr, stride_om,
                      HAS_BIAS: tl.constexpr):
    """out tile = acc * x_scale[m] * w_scale[n] (+ bias[n]), cast to out's dtype, rows / cols in range."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_scale = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)
    w_scale = tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)
    acc = acc * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _ptpc_gemm_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, FAST_ACCUM: tl.constexpr, EVEN_K: tl.constexpr, IMPRECISE_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    offs_m, offs_n, offs_k, x_ptrs, w_ptrs = grouped_tile(x_ptr, w_ptr, M, N, stride_xm, stride_wn,
                                                          BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(x, w, acc, max_num_imprecise_acc=IMPRECISE_K)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    store_scaled_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)


def imprecise_k(args) -> int | None:
    """max_num_imprecise_acc for tl.dot: promote every PROMOTE_K elements, or never (None: Triton's
    default, fast accumulation on sm_90) when FAST_ACCUM."""
    return None if args["FAST_ACCUM"] else min(PROMOTE_K, args["BLOCK_K"])


_heuristics = triton.heuristics({
    "EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
    "IMPRECISE_K": imprecise_k,
})
_kernel_fixed = _heuristics(_ptpc_gemm_kernel)
_kernel_tuned = triton.autotune(configs=CONFIGS, key=["N", "K", "M_BUCKET", "FAST_ACCUM"])(
    _heuristics(_ptpc_gemm_kernel))


def m_bucket(M: int) -> int:
    return min(launch_cache.next_power_of_2(max(M, 1)), 8192)


def prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype):
    """Contiguous operands, flat scales, the output; None when there is nothing to launch."""
    M, K = xq.shape
    N = wq.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=xq.device)
    if M == 0 or N == 0:
        return None, out
    if K == 0:  # empty sum: the bias (or zeros)
        out.copy_(bias.to(out_dtype).expand(M, N) if bias is not None else torch.zeros_like(out))
        return None, out
    xq = xq if xq.stride(-1) == 1 else xq.contiguous()
    wq = wq if wq.stride(-1) == 1 else wq.contiguous()
    ops = (xq, x_scale.reshape(M).contiguous(), wq, w_scale.reshape(N).contiguous(),
           bias.contiguous() if bias is not None else None)
    return ops, out


def ptpc_gemm_launch(xq, x_scale, wq, w_scale, bias, out_dtype, config: dict | None = None,
                     fast_accum: bool = False):
    """config (BLOCK_M/N/K, GROUP_M, num_warps, num_stages) skips autotuning (tune_linear.py)."""
    ops, out = prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype)
    if ops is None:
        return out
    xq, xs, wq, ws, bias = ops
    M, K = xq.shape
    N = wq.shape[0]
    args = (xq, xs, wq, ws, bias if bias is not None else ws, out, M, N, K, m_bucket(M),
            xq.stride(0), wq.stride(0), out.stride(0))

    def grid(meta):
        return (launch_cache.cdiv(M, meta["BLOCK_M"]) * launch_cache.cdiv(N, meta["BLOCK_N"]),)

    consts = dict(HAS_BIAS=bias is not None, FAST_ACCUM=bool(fast_accum))
    if config is not None:
        _kernel_fixed[grid](*args, **consts, **config)
    elif triton_interpret():
        _kernel_fixed[grid](*args, **consts, **INTERPRET_CONFIG)
    else:
        _kernel_tuned[grid](*args, **consts)
    return out
