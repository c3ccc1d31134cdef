"""Triton kernel for per_token_quant_fp8: one program per row.

Memory bound: read K inputs, write K fp8 bytes and one scale. Rows up to MAX_SINGLE_BLOCK
elements are read once (kept in registers between the amax and the quant pass); longer
rows loop twice over LOOP_BLOCK chunks, the second read hitting L2. Measured on an H100
(benchmarks/tune_linear.py): K = 4096 is best as one 4096 block with 8 warps (16 at
M <= 256); K = 14336 as 2048-wide chunks (Session 12: 1024-16384 wide blocks with 4-32 warps,
single-pass 16384 included, all slower). Session 22 (benchmarks/experiments_s22/
s22_quant_long_rows.py): with L2 eviction hints (the first read evict_last, the second read and
the store evict_first) and 8 warps, K = 14336 ran 22.9 / 69.4 / 129.1 us at M = 1024 / 4096 / 8192
against 23.0 / 71.0 / 134.6 (16 warps, no hints), the output bit for bit the same (a copy of the
same bytes: 16.6 / 60.0 / 118.4); so above SMALL_M_ROWS rows. At M = 1 / 16 8 warps were slower
(4.7 / 6.6 us against 3.4 / 4.5), so there it stays 16 warps without hints.

scale = max(amax * INV_FP8_MAX, SCALE_FLOOR) (fp32 multiply by constants rounded to fp32)
and q = x / scale with IEEE division (div_rn): bit for bit what the torch reference does on
CPU and GPU (Triton's `/` is the approximate div.full.f32).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from . import launch_cache

MAX_SINGLE_BLOCK = 8192
LOOP_BLOCK = 2048
LOOP_WARPS = 8  # long rows at M > SMALL_M_ROWS, with the L2 hints (Session 22)
LOOP_WARPS_FEW_ROWS = 16  # long rows at M <= SMALL_M_ROWS, no hints (8 warps: M = 1 3.4 -> 4.7 us, K = 14336)
SMALL_M_ROWS = 256  # up to here a 4096 block runs 16 warps, above it 8


@triton.jit
def _per_token_quant_fp8_kernel(
    x_ptr, xq_ptr, scale_ptr,
    K, stride_xm,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr, SINGLE_BLOCK: tl.constexpr, LAUNCH_DEPENDENTS: tl.constexpr = False,
    L2_HINTS: tl.constexpr = False,
):
    if LAUNCH_DEPENDENTS:  # sm_90 PDL: the next kernel (launched with launch_pdl) may start on freed SMs
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = xq_ptr + row * K
    offs = tl.arange(0, BLOCK_K)
    if SINGLE_BLOCK:
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0) * INV_FP8_MAX, SCALE_FLOOR)
        q = tl.clamp(tl.math.div_rn(x, tl.zeros_like(x) + scale), -FP8_MAX, FP8_MAX)
        tl.store(q_row + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    else:
        # L2_HINTS: the first read asks L2 to keep the row for the second; the second read and the store stream
        keep: tl.constexpr = "evict_last" if L2_HINTS else ""
        stream: tl.constexpr = "evict_first" if L2_HINTS else ""
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0.0, eviction_policy=keep).to(tl.float32)
            acc = tl.maximum(acc, tl.abs(x))
        scale = tl.maximum(tl.max(acc, axis=0) * INV_FP8_MAX, SCALE_FLOOR)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0.0, eviction_policy=stream).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, tl.zeros_like(x) + scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + k0 + offs, q.to(xq_ptr.dtype.element_ty), mask=mask, eviction_policy=stream)
    tl.store(scale_ptr + row, scale)


def default_quant_config(K: int, M: int | None = None) -> tuple[int, int, bool]:
    """(BLOCK_K, num_warps, single block) for M rows of K elements."""
    if K <= MAX_SINGLE_BLOCK:
        block = launch_cache.next_power_of_2(K)
        warps = 1 if block <= 512 else 4 if block <= 4096 else 8
        if M is not None and block == 4096:  # measured at K = 4096
            # few rows = few programs: spread each row over more threads so its loads all fly at
            # once (H100, K = 4096: M = 1 1.83 us with 16 warps vs 2.42 with 4; M = 1024 6.9 vs 7.9).
            # Above, 8 warps (Session 12, inputs rotated out of L2: M = 2048 / 4096 / 8192 11.1 / 19.9 /
            # 36.1 us against 12.9 / 21.7 / 37.9 with 4)
            warps = 16 if M <= SMALL_M_ROWS else 8
        return block, warps, True
    if M is not None and M <= SMALL_M_ROWS:
        return LOOP_BLOCK, LOOP_WARPS_FEW_ROWS, False
    return LOOP_BLOCK, LOOP_WARPS, False


def per_token_quant_fp8_launch(x: torch.Tensor, out_dtype: torch.dtype, fp8_max: float,
                               block_k: int | None = None, num_warps: int | None = None,
                               launch_dependents: bool = False):
    """block_k / num_warps override the default (benchmarks/tune_linear.py tries variants);
    block_k >= K reads the row once, a smaller block_k loops over it twice. launch_dependents (sm_90 only):
    let a GEMM launched next with PDL start on the SMs this kernel frees (ptpc_linear's PDL pair)."""
    shape = x.shape
    K = shape[-1]
    x2 = x.reshape(math.prod(shape[:-1]), K)  # not -1: K may be 0
    if K > 0 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    xq = torch.empty((M, K), dtype=out_dtype, device=x.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M == 0:
        return xq.view(shape), scale.view(*shape[:-1], 1)
    if K == 0:
        scale.fill_(scale_floor(fp8_max))
        return xq.view(shape), scale.view(*shape[:-1], 1)
    block, warps, single = default_quant_config(K, M)
    if block_k is not None:
        block = launch_cache.next_power_of_2(block_k)
        single = block >= K
    if num_warps is not None:
        warps = num_warps
    # after the first call of a specialization the compiled kernel is launched directly (launch_cache.py):
    # an eager linear runs this kernel and a GEMM, and Triton's JIT launch path is most of their host time
    launch_cache.launch(
        _COMPILED, _per_token_quant_fp8_kernel, (M,), (x2, xq, scale, K, x2.stride(0)),
        dict(FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max), SCALE_FLOOR=scale_floor(fp8_max),
             BLOCK_K=block, SINGLE_BLOCK=single, LAUNCH_DEPENDENTS=launch_dependents,
             L2_HINTS=not single and M > SMALL_M_ROWS),
        num_warps=warps,
    )
    return xq.view(shape), scale.view(*shape[:-1], 1)


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
