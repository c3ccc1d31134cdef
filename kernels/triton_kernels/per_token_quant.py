"""Triton kernel for per_token_quant_fp8: one program per row.

Memory bound: read K inputs, write K fp8 bytes and one scale. Rows up to MAX_SINGLE_BLOCK
elements are read once (kept in registers between the amax and the quant pass); longer
rows loop twice over LOOP_BLOCK chunks, the second read hitting L2 (Session 22: with L2
eviction hints, the first read evict_last, the second read and the store evict_first, above
SMALL_M_ROWS rows).

The division decides the speed of long rows. With IEEE division per element (div.rn) the
kernel was ALU-bound: K = 14336 had to run as two passes over 2048-wide chunks, 3.4 / 23.5 /
69.5 / 129.1 us at M = 1 / 1024 / 4096 / 8192 (H100, Session 23). With the reciprocal formed
once per row (divide_by_row_scale, the same bits) the row fits one 16384 block with 16 warps:
2.7 / 18.8 / 63.6 / 121.9 us; a copy of the same bytes 1.1 / 16.6 / 59.8 / 118.0
(benchmarks/experiments_s23/s23_quant_variants.py). K = 4096: one 4096 block with 8 warps
(16 at M <= 256).

scale = max(amax * INV_FP8_MAX, SCALE_FLOOR) (fp32 multiply by constants rounded to fp32)
and q = x / scale correctly rounded (IEEE): bit for bit what the torch reference does on
CPU and GPU (Triton's `/` is the approximate div.full.f32).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from . import launch_cache

MAX_SINGLE_BLOCK = 16384  # one block in registers, 16 warps at 16384
LOOP_BLOCK = 2048
LOOP_WARPS = 8  # long rows at M > SMALL_M_ROWS, with the L2 hints (Session 22)
LOOP_WARPS_FEW_ROWS = 16  # long rows at M <= SMALL_M_ROWS, no hints (8 warps: M = 1 3.4 -> 4.7 us, K = 14336)
SMALL_M_ROWS = 256  # up to here a 4096 block runs 16 warps, above it 8


@triton.jit
def divide_by_row_scale(x, scale):
    """x / scale as IEEE division rounds it, for a row whose elements share one scale > 0.

    Why not div.rn per element: that is a quarter-rate MUFU reciprocal, Newton steps and a special-case check
    per element, and it made the quant ALU-bound (H100, K = 14336, M = 1024: 23.5 us against ~18 with this,
    a copy of the same bytes 16.6; Session 23). Here 1/scale is formed once per row, as inv + inv_lo (inv =
    RN(1/scale), inv_lo its rounding error), and each element costs a multiply, three fmas and a sign copy:
    - q = RN(x * inv + x * inv_lo) is within one ulp of x / scale (x * (inv + inv_lo) is ~2^-46 off);
    - Markstein: with inv within half an ulp of 1/scale and q within one ulp, RN(q - (q*scale - x) * inv) is
      RN(x / scale), the remainder q*scale - x being exact in an fma.
    The theorem needs normal numbers, the remainder (~|x| 2^-24) included, and |x| <= fp8_max * scale holds
    in a row scaled by its own amax. So the quotient is IEEE's bit for bit down to ~2^-84 (tested to 2^-60);
    below, its last bits may differ, on values far under fp8's smallest step (2^-9), with the same sign: the
    fp8 cast makes both the same signed zero.
    scale = inf (a row with an inf) gives inv = inv_lo = 0: q = +-0, NaN for x = +-inf, as IEEE; the remainder
    uses FLT_MAX so that 0 * inf does not turn every element into NaN.
    tests/kernels/test_per_token_quant.py checks it against IEEE division over every bf16 value."""
    inv = tl.math.div_rn(1.0, scale)
    finite_scale = tl.minimum(scale, 3.4028234663852886e38)
    inv_lo = tl.fma(-finite_scale, inv, 1.0) * inv  # (1 - scale * inv) / scale: inv's rounding error
    q = tl.fma(x, inv, x * inv_lo)
    q = tl.fma(-tl.fma(q, finite_scale, -x), inv, q)
    # x / scale has x's sign (scale > 0): copy it (one LOP3), since an fma's zero result did not keep it (x = -0
    # came back +0 on an H100)
    sign = x.to(tl.int32, bitcast=True) & -2147483648
    return ((q.to(tl.int32, bitcast=True) & 2147483647) | sign).to(tl.float32, bitcast=True)


@triton.jit
def quantize_by_row_scale(x, scale, FP8_MAX: tl.constexpr):
    """per_token_quant_fp8's definition of q: clamp(x / scale) (IEEE division), before the cast to fp8. NaN stays
    NaN as in torch.clamp (an inf in a row makes its scale inf and inf / inf NaN); Triton's default clamp
    turns it into +-FP8_MAX."""
    return tl.clamp(divide_by_row_scale(x, scale), -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)


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
        q = quantize_by_row_scale(x, scale, FP8_MAX)
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
            q = quantize_by_row_scale(x, scale, FP8_MAX)
            tl.store(q_row + k0 + offs, q.to(xq_ptr.dtype.element_ty), mask=mask, eviction_policy=stream)
    tl.store(scale_ptr + row, scale)


def default_quant_config(K: int, M: int | None = None) -> tuple[int, int, bool]:
    """(BLOCK_K, num_warps, single block) for M rows of K elements."""
    if K <= MAX_SINGLE_BLOCK:
        block = launch_cache.next_power_of_2(K)
        warps = 1 if block <= 512 else 4 if block <= 4096 else 8 if block <= 8192 else 16
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
