"""Triton kernel for silu_mul_quant_fp8: one row per program.

y = silu(gate) * up with HF's roundings (each op in the input dtype), then per-row fp8
quant. Rows that fit one block are read once and kept in registers; longer rows (e.g.
Llama-70B's 28672) take two passes, the second recomputing y from L2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor

# A 16384-wide block in registers (Llama-3-8B's N = 14336) ran at half the copy bandwidth
# on an H100; above 8192 the row is looped over in LOOP_BLOCK chunks (second pass from L2),
# with per_token_quant's measured best for such rows (2048-wide chunks, 16 warps).
MAX_SINGLE_BLOCK = 8192
LOOP_BLOCK = 2048
LOOP_WARPS = 16


@triton.jit
def _silu_mul(g_ptrs, u_ptrs, mask, DTYPE: tl.constexpr):
    g = tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
    s = tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(DTYPE).to(tl.float32)  # F.silu (IEEE division), rounded
    return (s * u).to(DTYPE).to(tl.float32)  # the product, rounded likewise


@triton.jit
def _silu_mul_quant_kernel(
    gu_ptr, xq_ptr, scale_ptr, N, stride_row,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_row = gu_ptr + row * stride_row
    u_row = g_row + N
    q_row = xq_ptr + row * N
    offs = tl.arange(0, BLOCK_N)
    dtype = gu_ptr.dtype.element_ty
    if SINGLE_BLOCK:
        mask = offs < N
        y = _silu_mul(g_row + offs, u_row + offs, mask, dtype)
        # per_token_quant_fp8's definition: scale by an fp32 multiply, q by IEEE division
        scale = tl.maximum(tl.max(tl.abs(y), axis=0) * INV_FP8_MAX, SCALE_FLOOR)
        q = tl.clamp(tl.math.div_rn(y, tl.zeros_like(y) + scale), -FP8_MAX, FP8_MAX)
        tl.store(q_row + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            mask = n0 + offs < N
            acc = tl.maximum(acc, tl.abs(_silu_mul(g_row + n0 + offs, u_row + n0 + offs, mask, dtype)))
        scale = tl.maximum(tl.max(acc, axis=0) * INV_FP8_MAX, SCALE_FLOOR)
        for n0 in range(0, N, BLOCK_N):
            mask = n0 + offs < N
            y = _silu_mul(g_row + n0 + offs, u_row + n0 + offs, mask, dtype)
            q = tl.clamp(tl.math.div_rn(y, tl.zeros_like(y) + scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + n0 + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


def silu_mul_quant_fp8_launch(gate_up, out_dtype, fp8_max, max_single_block=MAX_SINGLE_BLOCK):
    shape = gate_up.shape
    N = shape[-1] // 2
    M = math.prod(shape[:-1])
    gu = gate_up.reshape(M, 2 * N)
    if gu.stride(-1) != 1:
        gu = gu.contiguous()
    xq = torch.empty((M, N), dtype=out_dtype, device=gate_up.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=gate_up.device)
    if M > 0 and N == 0:
        scale.fill_(scale_floor(fp8_max))
    elif M > 0:
        single = N <= max_single_block
        block = triton.next_power_of_2(N if single else min(LOOP_BLOCK, max_single_block))
        num_warps = 1 if block <= 512 else 4 if block <= 4096 else 8
        if not single and block == LOOP_BLOCK:
            num_warps = LOOP_WARPS
        _silu_mul_quant_kernel[(M,)](
            gu, xq, scale, N, gu.stride(0),
            FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max), SCALE_FLOOR=scale_floor(fp8_max),
            BLOCK_N=block, SINGLE_BLOCK=single, num_warps=num_warps,
        )
    return xq.view(*shape[:-1], N), scale.view(*shape[:-1], 1)
