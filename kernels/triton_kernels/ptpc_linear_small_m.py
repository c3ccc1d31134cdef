"""Triton one-launch ptpc_linear for a few rows (decode, M <= 16): the per-token quant inside the small-M GEMM.

Why: at M = 1 the two-launch linear (per_token_quant_fp8, then the small-M GEMM, a PDL pair on sm_90) spends
~1.7 us of its ~11 us at K = N = 4096 on the quant before the GEMM may read (Session 24). Here every program
computes the rows' scales itself, from the M rows of x (8 KB at M = 1, read from L2 by all but the first
program), then streams its weight slice as ptpc_gemm_small_m does, quantizing each x tile on the fly with
per_token_quant_fp8's exact formula (reciprocal formed once per row; the same fp8 bits as the quant kernel).

So the result equals per_token_quant_fp8 + ptpc_gemm_small_m with the same config bit for bit: the same q, the
same tl.dot order, the same epilogue (split-K included: each program stores the scales it computed - all
store the same values - and the epilogue reads them back after a barrier).

Cost that grows with M: every program reads all M rows for the amax, so this pays at M = 1 and loses as M
grows (session 4's version, which also divided per element with div.rn, lost at M = 16).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from . import launch_cache
from .per_token_quant import divide_by_reciprocal, row_scale_reciprocal
from .ptpc_gemm import imprecise_k
from .ptpc_gemm_small_m import _counters, split_k_epilogue

MAX_M = 16
AMAX_ELEMENTS = 8192  # x elements per amax load (AMAX_ROWS x AMAX_BLOCK): 64 per thread at 4 warps


@triton.jit
def _ptpc_linear_small_m_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    HAS_BIAS: tl.constexpr, FAST_ACCUM: tl.constexpr, EVEN_K: tl.constexpr, IMPRECISE_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    AMAX_ROWS: tl.constexpr, AMAX_BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)

    # 1. the rows' scales, per_token_quant_fp8's: max(amax * INV_FP8_MAX, SCALE_FLOOR)
    offs_r = tl.arange(0, AMAX_ROWS)
    offs_a = tl.arange(0, AMAX_BLOCK)
    r_ok = offs_r < M
    amax = tl.zeros([AMAX_ROWS], dtype=tl.float32)
    for k0 in range(0, K, AMAX_BLOCK):
        xa = tl.load(x_ptr + offs_r[:, None].to(tl.int64) * stride_xm + k0 + offs_a[None, :],
                     mask=r_ok[:, None] & (offs_a < K - k0)[None, :], other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(xa.to(tl.float32)), axis=1))
    scale_r = tl.maximum(amax * INV_FP8_MAX, SCALE_FLOOR)
    # every program stores the same scales; the epilogue reads them back (split-K: the last arriver)
    tl.store(xs_ptr + offs_r, scale_r, mask=r_ok)

    # the scales on the dot's BLOCK_M rows (AMAX_ROWS <= BLOCK_M; padding rows: the floor, their x is 0)
    offs_m = tl.arange(0, BLOCK_M)
    scale_m = tl.sum(tl.where(offs_m[:, None] == offs_r[None, :], scale_r[None, :], 0.0), axis=1)
    scale_m = tl.maximum(scale_m, SCALE_FLOOR)[:, None]
    finite_scale, inv, inv_lo = row_scale_reciprocal(scale_m)

    # 2. the small-M GEMM (ptpc_gemm_small_m's loop) on x tiles quantized on the fly
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    cols = (offs_n % N).to(tl.int64)  # wrap: valid memory, discarded at the store
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_cols = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_begin = pid_k * k_per_split
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_begin + k_per_split, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_cols + k0)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + k0, mask=k_ok[:, None], other=0.0)
        q = divide_by_reciprocal(x.to(tl.float32), finite_scale, inv, inv_lo)
        q = tl.clamp(q, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
        acc = tl.dot(q.to(w_ptr.dtype.element_ty), w, acc, max_num_imprecise_acc=IMPRECISE_K)

    tl.debug_barrier()  # this program's scale stores are visible to all its threads
    split_k_epilogue(acc, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, xs_ptr, ws_ptr, bias_ptr, out_ptr,
                     part_ptr, count_ptr, pid_n, pid_k, SPLIT_K, HAS_BIAS, BLOCK_M, BLOCK_N)


def ptpc_linear_small_m_launch(x, wq, w_scale, bias, fp8_max: float, config: dict, fast_accum: bool = False):
    """ptpc_linear for M <= MAX_M rows in one launch: x [..., K] (bf16 / fp16 / fp32), wq [N, K] fp8,
    w_scale [N, 1] fp32, bias [N]? -> [..., N] in x's dtype. config: a ptpc_gemm_small_m.TUNED entry."""
    K = x.shape[-1]
    N = wq.shape[0]
    x2 = x.reshape(math.prod(x.shape[:-1]), K)
    M = x2.shape[0]
    if M > MAX_M:
        raise ValueError(f"ptpc_linear_small_m takes M <= {MAX_M} rows, got M = {M}")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0 or K == 0:
        raise ValueError("ptpc_linear_small_m: M, N and K must be > 0 (ptpc_linear handles empty shapes)")
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    wq = wq if wq.stride(-1) == 1 else wq.contiguous()
    ws = w_scale.reshape(N).contiguous()
    xs = torch.empty((M,), dtype=torch.float32, device=x.device)
    block_n, block_k, split_k = config["BLOCK_N"], config["BLOCK_K"], config["SPLIT_K"]
    counters = _counters(x.device, launch_cache.cdiv(N, 16)) if split_k > 1 else None
    if split_k > 1 and counters is None:
        raise RuntimeError("ptpc_linear_small_m: no split-K counters during this CUDA-graph capture")
    partials = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device) if split_k > 1 else out
    block_m = max(16, launch_cache.next_power_of_2(M))
    amax_rows = launch_cache.next_power_of_2(M)
    amax_block = min(launch_cache.next_power_of_2(K), max(AMAX_ELEMENTS // amax_rows, block_k))
    args = (x2, xs, wq, ws, bias if bias is not None else ws, out, partials,
            counters if counters is not None else ws, M, N, K, x2.stride(0), wq.stride(0), out.stride(0))
    constexprs = dict(  # the kernel's order
        FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max), SCALE_FLOOR=scale_floor(fp8_max),
        HAS_BIAS=bias is not None, FAST_ACCUM=bool(fast_accum), EVEN_K=K % (block_k * split_k) == 0,
        IMPRECISE_K=imprecise_k({"FAST_ACCUM": bool(fast_accum), "BLOCK_K": block_k}),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
        AMAX_ROWS=amax_rows, AMAX_BLOCK=amax_block,
    )
    options = {k: v for k, v in config.items() if k in ("num_warps", "num_stages")}
    launch_cache.launch(_COMPILED, _ptpc_linear_small_m_kernel, (launch_cache.cdiv(N, block_n), split_k), args,
                        constexprs, **options)
    return out.reshape(*x.shape[:-1], N)


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
