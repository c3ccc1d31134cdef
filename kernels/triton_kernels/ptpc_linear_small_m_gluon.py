"""Gluon one-launch ptpc_linear for a few rows (decode: M <= 4, or 8 at K <= 2048, in ptpc_linear) on Hopper: the
weight stream first.

Why: at M = 1 the two-launch linear (per_token_quant_fp8, then the small-M GEMM, a PDL pair) spends ~1.6 us of
its ~10.8 us at K = N = 4096 waiting for the quant before the GEMM reads its weight (RESULTS.md, Sessions 24-25).
Plain Triton cannot start a loop's loads before work placed ahead of the loop (Session 25's one-launch kernel
quantized x inside the loop and ran 2-3x slower). Here the order is explicit. Program (n, s) owns 64 weight
rows and the s-th of SPLIT_K slices of K (KS = K / SPLIT_K columns, a power of two):
  1. it issues TMA loads for the first STAGES [64, 128] fp8 boxes of its weight slice;
  2. while they stream, it loads its [MP, KS] slice of x in one go, computes the rows' scales from all of K
     (per_token_quant_fp8's: max(amax / fp8_max, floor)) and writes q = x / scale (IEEE division, the quant's
     bits) into shared memory as fp8;
  3. then out^T = W @ q^T on wgmma (64 weight rows x MP token columns, MP = max(8, M) rounded up to a power
     of two), each 128-deep box's product added into an fp32 accumulator (precise accumulation, as the Gluon
     GEMM), each stage refilled as soon as its product is done;
  4. epilogue: out[m, n] = acc[n, m] * x_scale[m] * w_scale[n] (+ bias[n]). With SPLIT_K > 1 the programs of a
     column tile store fp32 partials and the last to arrive sums them in a fixed order (ptpc_gemm_small_m's
     scheme and counters: deterministic, one launch, no memset).

Every program reads all M rows of x for the amax, so the cost grows with M x K: on an H100 (Session 26,
benchmarks/experiments_s26) it beats the PDL pair at M <= 4 and K = 4096 (K = N = 4096: 9.6 / 10.3 / 10.6 us
at M = 1 / 2 / 4 against 10.8 / 10.9 / 10.9; N = 6144, M = 1: 12.5 against 14.0) and loses from M = 8 on and at
K = 14336 (M = 1: 27.2 against 26.5). At K = 1024-2048 it also beats the pair at M = 8 (Session 27,
benchmarks/experiments_s27/s27_small_k.py). ptpc_linear takes it there (ptpc_linear._one_launch_takes).

Needs sm_90 and a Triton with Gluon (3.6 and newer); bf16 / fp16 x, float8_e4m3fn weights, K a multiple of 128.
"""

from __future__ import annotations

import functools

import torch
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from . import launch_cache
from .ptpc_gemm_gluon import HAVE_GLUON, available

if HAVE_GLUON:
    from .ptpc_gemm_gluon import (
        TensorDescriptor,
        fence_async_shared,
        gl,
        gluon,
        mbarrier,
        tma_load,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    # a CTA-wide barrier: gl.barrier in newer Tritons, gl.thread_barrier in 3.6
    cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier

BLOCK_N = 64  # weight rows per program: the wgmma's M
BLOCK_K = 128  # one box, one promotion into the fp32 accumulator
MAX_M = 16
SMEM_LIMIT = 227 * 1024


if HAVE_GLUON:

    @gluon.jit
    def _divide_by_row_scale(x, scale):
        # per_token_quant's divide_by_row_scale (triton_kernels/per_token_quant.py says why it is IEEE's x / scale)
        inv = gl.div_rn(gl.full_like(scale, 1.0), scale)
        finite_scale = gl.minimum(scale, 3.4028234663852886e38)
        inv_lo = gl.fma(-finite_scale, inv, 1.0) * inv
        q = gl.fma(x, inv, x * inv_lo)
        q = gl.fma(-gl.fma(q, finite_scale, -x), inv, q)
        sign = x.to(gl.int32, bitcast=True) & -2147483648
        return ((q.to(gl.int32, bitcast=True) & 2147483647) | sign).to(gl.float32, bitcast=True)

    @gluon.jit
    def _ptpc_linear_small_m_gluon_kernel(
        x_ptr, w_desc, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr,
        M, N, stride_xm, stride_om,
        K: gl.constexpr, MROWS: gl.constexpr, MP: gl.constexpr, AMAX_COLS: gl.constexpr, STAGES: gl.constexpr,
        SPLIT_K: gl.constexpr, FP8_MAX: gl.constexpr, INV_FP8_MAX: gl.constexpr, SCALE_FLOOR: gl.constexpr,
        HAS_BIAS: gl.constexpr, XA_LAYOUT: gl.constexpr, XQ_REG_LAYOUT: gl.constexpr, XQ_LAYOUT: gl.constexpr,
    ):
        BN: gl.constexpr = w_desc.block_type.shape[0]
        BK: gl.constexpr = w_desc.block_type.shape[1]
        KS: gl.constexpr = K // SPLIT_K  # this program's K slice (a multiple of BK: the launcher's gate)
        KBL: gl.constexpr = KS // BK  # its boxes
        pid_n = gl.program_id(0)
        pid_k = gl.program_id(1)
        off_n = pid_n * BN
        k0 = pid_k * KS

        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BN, BK], w_desc.layout)
        xq_smem = gl.allocate_shared_memory(w_desc.dtype, [MP, KS], XQ_LAYOUT)
        scale_smem = gl.allocate_shared_memory(gl.float32, [MP], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)

        # 1. the weight stream first: it does not depend on x
        for s in gl.static_range(STAGES):
            if s < KBL:
                mbarrier.expect(ready.index(s), w_desc.block_type.nbytes)
                tma_load(w_desc, [off_n, k0 + s * BK], ready.index(s), w_bufs.index(s))

        # 2. this program's slice of x (MP rows, the ones past M masked to 0) in one load, issued first; the rows'
        #    scales from all of K in AMAX_COLS-wide loads (one at K <= AMAX_COLS); then q into shared memory
        q_rows = gl.arange(0, MP, layout=gl.SliceLayout(1, XQ_REG_LAYOUT))
        q_cols = gl.arange(0, KS, layout=gl.SliceLayout(0, XQ_REG_LAYOUT))
        x_slice = gl.load(x_ptr + gl.expand_dims(q_rows.to(gl.int64) * stride_xm, 1) + k0 + gl.expand_dims(q_cols, 0),
                          mask=gl.expand_dims(q_rows < M, 1), other=0.0)
        a_rows = gl.arange(0, MROWS, layout=gl.SliceLayout(1, XA_LAYOUT))
        a_cols = gl.arange(0, AMAX_COLS, layout=gl.SliceLayout(0, XA_LAYOUT))
        a_ptrs = x_ptr + gl.expand_dims(a_rows.to(gl.int64) * stride_xm, 1) + gl.expand_dims(a_cols, 0)
        amax = gl.zeros([MROWS], gl.float32, gl.SliceLayout(1, XA_LAYOUT))
        for c in gl.static_range(K // AMAX_COLS):
            xa = gl.load(a_ptrs + c * AMAX_COLS, mask=gl.expand_dims(a_rows < M, 1), other=0.0)
            amax = gl.maximum(amax, gl.max(gl.abs(xa.to(gl.float32)), axis=1), propagate_nan=tl.PropagateNan.ALL)
        # the scales move to the q layout's rows (MP >= MROWS) through shared memory
        scale_smem.slice(0, MROWS).store(gl.maximum(amax * INV_FP8_MAX, SCALE_FLOOR))
        cta_barrier()
        scale = scale_smem.load(gl.SliceLayout(1, XQ_REG_LAYOUT))
        scale = gl.where(q_rows < M, scale, SCALE_FLOOR)  # rows past M: never stored (their x is 0)
        q = _divide_by_row_scale(x_slice.to(gl.float32), gl.expand_dims(scale, 1))
        q = gl.minimum(gl.maximum(q, -FP8_MAX, propagate_nan=tl.PropagateNan.ALL), FP8_MAX,
                       propagate_nan=tl.PropagateNan.ALL)
        xq_smem.store(q.to(w_desc.dtype))
        fence_async_shared()  # the q stores (generic proxy) before wgmma reads them (async proxy)
        cta_barrier()

        # 3. out^T = W @ q^T, one promotion per box, each stage refilled once its product is done
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, MP, 32])
        acc = gl.zeros([BN, MP], gl.float32, mma_layout)
        for j in gl.static_range(KBL):  # unrolled: a box slice of q needs a constant start
            stage = j % STAGES
            mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
            part = warpgroup_mma(w_bufs.index(stage), xq_smem.slice(j * BK, BK, dim=1).permute((1, 0)), acc,
                                 use_acc=False, is_async=True)
            part = warpgroup_mma_wait(0, deps=(part,))
            acc = acc + part
            nxt = j + STAGES
            if nxt < KBL:
                cta_barrier()  # every warp's share of the product is done before the stage is overwritten
                mbarrier.expect(ready.index(stage), w_desc.block_type.nbytes)
                tma_load(w_desc, [off_n, k0 + nxt * BK], ready.index(stage), w_bufs.index(stage))

        # 4. epilogue
        n_idx = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, mma_layout))
        m_idx = gl.arange(0, MP, layout=gl.SliceLayout(0, mma_layout))
        xs = gl.where(m_idx < M, scale_smem.load(gl.SliceLayout(0, mma_layout)), 0.0)
        mask = gl.expand_dims(n_idx < N, 1) & gl.expand_dims(m_idx < M, 0)
        if SPLIT_K > 1:
            # partials [SPLIT_K, M, N] fp32; the last program of this column tile sums them in a fixed order
            part_tile = gl.expand_dims(m_idx, 0) * N + gl.expand_dims(n_idx, 1)
            gl.store(part_ptr + pid_k * M * N + part_tile, acc, mask=mask)
            cta_barrier()
            arrived = gl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
            if arrived == SPLIT_K - 1:
                total = gl.zeros([BN, MP], gl.float32, mma_layout)
                for p in gl.static_range(SPLIT_K):
                    total += gl.load(part_ptr + p * M * N + part_tile, mask=mask, other=0.0, cache_modifier=".cg")
                _store_out(total, xs, n_idx, m_idx, mask, N, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)
                gl.atomic_xchg(count_ptr + pid_n, 0)  # ready for the next call / graph replay
        else:
            _store_out(acc, xs, n_idx, m_idx, mask, N, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)

    @gluon.jit
    def _store_out(acc, xs, n_idx, m_idx, mask, N, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS: gl.constexpr):
        n_ok = n_idx < N
        ws = gl.load(ws_ptr + n_idx, mask=n_ok, other=0.0)
        out = acc * gl.expand_dims(ws, 1) * gl.expand_dims(xs, 0)
        if HAS_BIAS:
            out = out + gl.expand_dims(gl.load(bias_ptr + n_idx, mask=n_ok, other=0.0).to(gl.float32), 1)
        gl.store(out_ptr + gl.expand_dims(m_idx, 0) * stride_om + gl.expand_dims(n_idx, 1),
                 out.to(out_ptr.dtype.element_ty), mask=mask)


AMAX_ELEMENTS = 16384  # x elements per amax load: 128 per thread at 4 warps
SLICE_ELEMENTS = 16384  # the most x elements a program quantizes (MP x K / split_k), kept in registers


def reg_layout(rows: int, cols: int):
    """A [rows, cols] register tile over 4 warps with 16-byte loads of bf16 (8 per thread along K)."""
    tk = min(32, max(1, cols // 8))
    tr = 32 // tk
    return gl.BlockedLayout([1, 8], [tr, tk], [1, 4] if rows <= tr else [4, 1], [1, 0])


@functools.lru_cache(maxsize=None)
def _layouts(mrows: int, mp: int, ks: int, amax_cols: int):
    w_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float8e4nv)
    xq_layout = gl.NVMMASharedLayout.get_default_for([mp, BLOCK_K], gl.float8e4nv)
    return w_layout, xq_layout, reg_layout(mrows, amax_cols), reg_layout(mp, ks)


def shapes(M: int, K: int, split_k: int) -> tuple[int, int, int, int]:
    """(MROWS, MP, KS, AMAX_COLS): x's rows rounded to a power of two, the product's token columns (wgmma N >= 8),
    a program's K slice and the width of one amax load."""
    mrows = launch_cache.next_power_of_2(M)
    mp = max(8, mrows)
    return mrows, mp, K // split_k, min(K & -K, AMAX_ELEMENTS // mrows)  # K & -K: the largest power of 2 dividing K


def shared_bytes(K: int, mp: int, stages: int, split_k: int) -> int:
    return stages * BLOCK_N * BLOCK_K + (K // split_k) * mp + 1024


def default_config(K: int) -> tuple[int, int]:
    """(stages, split_k) for ptpc_linear, a 4-stage ring; measured on an H100:
    - K <= 1024: no split (K = 1024, N = 2048 / 4096, M = 1: 4.5 / 4.8 us against 4.7-5.4 split 2-8; Session 27);
    - K = 2048: 4 slices of 512 columns (N = 4096, M = 1 / 4: 6.7 / 7.1 us against 7.2 / 7.9 with 2; Session 27);
    - else slices of 1024 columns (K = 4096: 9.6 us at M = 1 against 9.7-10.4 for 6 other configs; Session 26)."""
    if K <= 1024:
        return 4, 1
    if K == 2048:
        return 4, 4
    return 4, max(1, K // 1024)


def unsupported_reason(x2: torch.Tensor, wq: torch.Tensor, stages: int, split_k: int) -> str | None:
    """Why this kernel cannot run the call (None: it can)."""
    if not available(x2.device):
        return "needs an sm_90 GPU and a Triton with Gluon"
    return shape_reason(x2.shape[0], x2.shape[1], x2.dtype, wq.dtype, stages, split_k)


def shape_reason(M: int, K: int, x_dtype: torch.dtype, w_dtype: torch.dtype, stages: int, split_k: int) -> str | None:
    """Why a call of this shape and these dtypes cannot run here, whatever the device (None: it can)."""
    if not 0 < M <= MAX_M:
        return f"M = {M}: this kernel takes 1..{MAX_M} rows"
    if w_dtype != torch.float8_e4m3fn or x_dtype not in (torch.bfloat16, torch.float16):
        return "float8_e4m3fn weight and bf16 / fp16 x only"
    mrows, mp, ks, amax_cols = shapes(M, K, split_k)
    if split_k < 1 or stages < 1 or K % (BLOCK_K * split_k) or K % amax_cols or ks & (ks - 1):
        return f"K = {K}: split_k {split_k} must leave a power-of-two slice of whole {BLOCK_K}-wide boxes"
    if mp * ks > SLICE_ELEMENTS:
        return f"a {mp} x {ks} slice of x is more than {SLICE_ELEMENTS} elements: raise split_k"
    if shared_bytes(K, mp, stages, split_k) > SMEM_LIMIT:
        return f"K = {K} with {stages} stages needs more than {SMEM_LIMIT} bytes of shared memory"
    return None


def ptpc_linear_small_m_gluon(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                              fp8_max: float, stages: int | None = None,
                              split_k: int | None = None) -> torch.Tensor | None:
    """ptpc_linear in one launch for M <= 16 rows: x [..., K] bf16 / fp16, wq [N, K] float8_e4m3fn, w_scale [N, 1]
    fp32, bias [N]? -> [..., N] in x's dtype. stages / split_k: default_config's unless given.
    Returns None (nothing launched) while a CUDA graph is being captured and no split-K counters can be had without
    allocating (ptpc_gemm_small_m._counters); the caller then runs the two-launch linear."""
    K = x.shape[-1]
    N = wq.shape[0]
    default_stages, default_split = default_config(K)
    stages = default_stages if stages is None else stages
    split_k = default_split if split_k is None else split_k
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    reason = unsupported_reason(x2, wq, stages, split_k)
    if reason is not None:
        raise ValueError(f"ptpc_linear_small_m_gluon: {reason}")
    if split_k > 1:
        from .ptpc_gemm_small_m import _counters
        counters = _counters(x2.device, launch_cache.cdiv(N, 16))
        if counters is None:
            return None
    else:
        counters = None
    out = _launch(x2, wq, w_scale, bias, fp8_max, stages, split_k, counters)
    return out.reshape(*x.shape[:-1], N)


def _launch(x2, wq, w_scale, bias, fp8_max, stages, split_k, counters):
    M, K = x2.shape
    N = wq.shape[0]
    mrows, mp, ks, amax_cols = shapes(M, K, split_k)
    wq = wq if wq.is_contiguous() else wq.contiguous()
    ws = w_scale.reshape(N).contiguous()
    out = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    w_layout, xq_layout, xa_layout, xq_reg_layout = _layouts(mrows, mp, ks, amax_cols)
    w_desc = TensorDescriptor.from_tensor(wq, [BLOCK_N, BLOCK_K], w_layout)
    tiles = launch_cache.cdiv(N, BLOCK_N)
    # split-K: [SPLIT_K, M, N] fp32 partials; without it the kernel never touches them (nor the counters)
    partials = torch.empty((split_k, M, N), dtype=torch.float32, device=x2.device) if split_k > 1 else out
    counters = counters if counters is not None else ws
    args = (x2, w_desc, ws, bias if bias is not None else ws, out, partials, counters,
            M, N, x2.stride(0), out.stride(0))
    constexprs = dict(K=K, MROWS=mrows, MP=mp, AMAX_COLS=amax_cols, STAGES=stages,
                      SPLIT_K=split_k, FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max),
                      SCALE_FLOOR=scale_floor(fp8_max), HAS_BIAS=bias is not None,
                      XA_LAYOUT=xa_layout, XQ_REG_LAYOUT=xq_reg_layout, XQ_LAYOUT=xq_layout)
    launch_cache.launch(_COMPILED, _ptpc_linear_small_m_gluon_kernel, (tiles, split_k), args, constexprs,
                        num_warps=4)
    return out


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
