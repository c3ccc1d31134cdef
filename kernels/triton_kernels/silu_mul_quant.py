"""Triton kernel for silu_mul_quant_fp8: y = silu(gate) * up, then per-row fp8 quant.

y follows HF's roundings (each op in the input dtype); the quant is per_token_quant_fp8's
(scale by an fp32 multiply, q by IEEE division), so the output matches the torch reference
bit for bit. gate and up are two row-major [M, N] operands with their own row strides: the
two halves of one gate_up tensor, or two separate tensors.

Three paths, picked by the row length and the row count:
  - single block (N <= MAX_SINGLE_BLOCK): one row per program, read once, kept in registers;
  - few long rows (M < FEW_ROWS, decode): y by an elementwise kernel over many programs, then
    per_token_quant_fp8's kernel. One program per row left the work on M SMs (~40 instructions
    per element: IEEE divisions): H100, M = 16, N = 14336: 7.4-8.1 us vs ~5.2 us in two launches;
  - persistent (many long rows, e.g. Llama-3-8B's 14336): a fixed grid of PROGRAMS_PER_SM programs
    per SM walks the rows. Pass 1 computes y chunk by chunk, tracks |y|'s max and writes y (exact
    in the input dtype) to the program's own scratch row; pass 2 reads y back and quantizes it.
    The scratch (programs x N, ~15 MB at N = 14336 on an H100) is rewritten row after row, so it
    stays in L2: HBM sees gate and up read once and xq written once. The earlier two-pass form
    recomputed silu in its second pass (three IEEE divisions per element) and was ALU-bound:
    H100, M = 8192, N = 14336: 317 us -> 255 us (Inductor's silu*mul + per_token_quant_fp8,
    what a patched model ran before: 364 us).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from ..platform import triton_interpret
from . import launch_cache
from .per_token_quant import per_token_quant_fp8_launch, quantize_by_row_scale

# A 16384-wide block in registers (Llama-3-8B's N = 14336) ran at half the copy bandwidth on an
# H100: rows above this take the persistent path.
MAX_SINGLE_BLOCK = 8192
# Persistent path, H100 sweep at M = 8192, N = 14336 (block x warps x programs per SM, session 10):
# 2048 x 8 x 4 was the fastest in two sweeps of 18 and 24 tiles (255 us; 1024 x 8 x 4: 284 us; x 2 programs
# per SM: 340 us).
LOOP_BLOCK = 2048
LOOP_WARPS = 8
PROGRAMS_PER_SM = 4
INTERPRET_PROGRAMS = 2  # the interpreter runs programs one after another: few, to keep tests fast
# Below this many long rows the two-launch path wins (H100, N = 14336 / 12288, us, persistent vs Inductor's
# silu*mul + per_token_quant_fp8, session 10: M = 16 8.1 / 5.2, M = 64 8.4 / 6.2, M = 128 10.0 / 7.6 and
# 8.4 / 10.0, M = 256 12.1 / 11.6 and 10.7 / 15.5).
FEW_ROWS = 128
ELEMENTWISE_BLOCK = 1024


@triton.jit
def _silu_mul(g_ptrs, u_ptrs, mask, DTYPE: tl.constexpr):
    # gate / up are read once: evict_first keeps L2 for the scratch rows
    g = tl.load(g_ptrs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    u = tl.load(u_ptrs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    s = tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(DTYPE).to(tl.float32)  # F.silu (IEEE division), rounded
    return (s * u).to(DTYPE).to(tl.float32)  # the product, rounded likewise


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, stride_g, stride_u, BLOCK_N: tl.constexpr):
    """y = silu(gate) * up for one BLOCK_N slice of one row (the few-rows path; the quant follows)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    y = _silu_mul(g_ptr + row * stride_g + cols, u_ptr + row * stride_u + cols, mask, g_ptr.dtype.element_ty)
    tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_quant_row_kernel(
    g_ptr, u_ptr, xq_ptr, scale_ptr, N, stride_g, stride_u,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One row per program, the whole row in one block."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    y = _silu_mul(g_ptr + row * stride_g + offs, u_ptr + row * stride_u + offs, mask, g_ptr.dtype.element_ty)
    scale = tl.maximum(tl.max(tl.abs(y), axis=0) * INV_FP8_MAX, SCALE_FLOOR)
    q = quantize_by_row_scale(y, scale, FP8_MAX)
    tl.store(xq_ptr + row * N + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _silu_mul_quant_persistent_kernel(
    g_ptr, u_ptr, xq_ptr, scale_ptr, scratch_ptr, M, N, stride_g, stride_u,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """A fixed grid walks the rows; y goes through this program's scratch row (see the module doc).
    The two barriers order the scratch's writes before its reads (and a row's reads before the next
    row's writes) across the program's threads, whatever layout each access gets."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    dtype = g_ptr.dtype.element_ty
    scratch = scratch_ptr + pid.to(tl.int64) * N
    for row in range(pid, M, tl.num_programs(0)):
        r = tl.cast(row, tl.int64)
        g_row = g_ptr + r * stride_g
        u_row = u_ptr + r * stride_u
        amax = tl.zeros([BLOCK_N], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            mask = n0 + offs < N
            y = _silu_mul(g_row + n0 + offs, u_row + n0 + offs, mask, dtype)
            tl.store(scratch + n0 + offs, y.to(dtype), mask=mask)  # exact: y is rounded to dtype already
            amax = tl.maximum(amax, tl.abs(y))
        scale = tl.maximum(tl.max(amax, axis=0) * INV_FP8_MAX, SCALE_FLOOR)
        tl.debug_barrier()
        for n0 in range(0, N, BLOCK_N):
            mask = n0 + offs < N
            y = tl.load(scratch + n0 + offs, mask=mask, other=0.0).to(tl.float32)
            q = quantize_by_row_scale(y, scale, FP8_MAX)
            tl.store(xq_ptr + r * N + n0 + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + row, scale)
        tl.debug_barrier()


def _rows(t: torch.Tensor, M: int, N: int) -> torch.Tensor:
    """t as [M, N] with unit stride on the last dim (a view where possible)."""
    t = t.reshape(M, N)
    return t if t.stride(-1) == 1 else t.contiguous()


def silu_mul_quant_fp8_launch(gate_up, out_dtype, fp8_max, max_single_block=MAX_SINGLE_BLOCK, up=None,
                              programs=None, few_rows=FEW_ROWS):
    """gate_up [..., 2N] (gate then up), or gate [..., N] with up [..., N] -> (xq [..., N], scale [..., 1]).

    max_single_block / programs / few_rows: the longest row kept in one block, the persistent grid size
    (default PROGRAMS_PER_SM per SM) and the row count from which long rows go persistent, for tests and
    tuning."""
    shape = gate_up.shape
    N = shape[-1] if up is not None else shape[-1] // 2
    M = math.prod(shape[:-1])
    if up is not None:
        gate, up = _rows(gate_up, M, N), _rows(up, M, N)
    else:
        gu = _rows(gate_up, M, 2 * N)
        gate, up = gu[:, :N], gu[:, N:]
    if 0 < M < few_rows and N > max_single_block:
        y = torch.empty((M, N), dtype=gate.dtype, device=gate.device)
        _silu_mul_kernel[(M, launch_cache.cdiv(N, ELEMENTWISE_BLOCK))](
            gate, up, y, N, gate.stride(0), up.stride(0), BLOCK_N=ELEMENTWISE_BLOCK, num_warps=4)
        return per_token_quant_fp8_launch(y.view(*shape[:-1], N), out_dtype, fp8_max)
    xq = torch.empty((M, N), dtype=out_dtype, device=gate_up.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=gate_up.device)
    consts = dict(FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max), SCALE_FLOOR=scale_floor(fp8_max))
    if M > 0 and N == 0:
        scale.fill_(scale_floor(fp8_max))
    elif M > 0 and N <= max_single_block:
        block = launch_cache.next_power_of_2(N)
        num_warps = 1 if block <= 512 else 4 if block <= 4096 else 8
        _silu_mul_quant_row_kernel[(M,)](
            gate, up, xq, scale, N, gate.stride(0), up.stride(0), **consts, BLOCK_N=block, num_warps=num_warps,
        )
    elif M > 0:
        if programs is None:
            programs = (INTERPRET_PROGRAMS if triton_interpret() else
                        PROGRAMS_PER_SM * torch.cuda.get_device_properties(gate.device).multi_processor_count)
        programs = max(1, min(M, programs))
        block = min(LOOP_BLOCK, launch_cache.next_power_of_2(min(N, max_single_block)))
        scratch = torch.empty((programs, N), dtype=gate.dtype, device=gate.device)
        _silu_mul_quant_persistent_kernel[(programs,)](
            gate, up, xq, scale, scratch, M, N, gate.stride(0), up.stride(0), **consts, BLOCK_N=block,
            num_warps=LOOP_WARPS if block == LOOP_BLOCK else 4,
        )
    return xq.view(*shape[:-1], N), scale.view(*shape[:-1], 1)
