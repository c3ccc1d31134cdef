"""Gluon one-launch ptpc_linear for a few rows (decode, M <= 16) on Hopper: the weight stream starts first.

Why: at M = 1 the two-launch linear (per_token_quant_fp8, then the small-M GEMM, a PDL pair) spends ~1.6 us of
its ~10.8 us at K = N = 4096 on the quant before the GEMM may read its weight (RESULTS.md, Sessions 24-25).
Plain Triton cannot start a loop's loads before work that comes ahead of the loop (Session 25's one-launch
kernel quantized each x tile inside the loop and ran 2-3x slower). Here the order is explicit:
  1. each program issues TMA loads for the first STAGES boxes of its weight slice ([64, 128] fp8 each);
  2. while they are in flight it computes its rows' scales (amax over all of K) and writes its slice of
     q = x / scale, as per_token_quant_fp8 rounds it, into shared memory (fp8);
  3. then it runs the swap-AB product out^T = W @ q^T on wgmma (64 weight rows x MP token columns), adding
     each 128-deep box's product into an fp32 accumulator (precise accumulation, as the Gluon GEMM), and
     refills the box's stage;
  4. epilogue: out[m, n] = acc[n, m] * x_scale[m] * w_scale[n] (+ bias[n]). With SPLIT_K > 1 the programs of a
     column tile store fp32 partials and the last to arrive sums them in a fixed order (ptpc_gemm_small_m's
     scheme, the same counters).
Every program reads all M rows of x for the amax (8 KB at M = 1, from L2 after the first program).

Needs sm_90 and a Triton with Gluon (3.6 and newer).
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
        x_ptr, xs_ptr, w_desc, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr,
        M, N, stride_xm, stride_om,
        QUANT: gl.constexpr, PDL: gl.constexpr, K: gl.constexpr, MROWS: gl.constexpr, MP: gl.constexpr, AMAX_COLS: gl.constexpr, STAGES: gl.constexpr,
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

        # sm_90 PDL (the pre-quantized mode as the dependent of the quant kernel): the weight loads above do not
        # depend on that kernel, so they are in flight before this wait; x and its scales are read after it
        if PDL:
            gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False,
                                      pack=1)
        q_rows = gl.arange(0, MP, layout=gl.SliceLayout(1, XQ_REG_LAYOUT))
        q_cols = gl.arange(0, KS, layout=gl.SliceLayout(0, XQ_REG_LAYOUT))
        x_slice = gl.load(x_ptr + gl.expand_dims(q_rows.to(gl.int64) * stride_xm, 1) + k0 + gl.expand_dims(q_cols, 0),
                          mask=gl.expand_dims(q_rows < M, 1), other=0.0)
        if QUANT:
            # 2. x's slice (MP rows, the ones past M masked to 0) was loaded in one go above; the rows' scales come
            #    from all of K in AMAX_COLS-wide loads (one at K <= AMAX_COLS); then q into shared memory
            a_rows = gl.arange(0, MROWS, layout=gl.SliceLayout(1, XA_LAYOUT))
            a_cols = gl.arange(0, AMAX_COLS, layout=gl.SliceLayout(0, XA_LAYOUT))
            a_ptrs = x_ptr + gl.expand_dims(a_rows.to(gl.int64) * stride_xm, 1) + gl.expand_dims(a_cols, 0)
            amax = gl.zeros([MROWS], gl.float32, gl.SliceLayout(1, XA_LAYOUT))
            for c in gl.static_range(K // AMAX_COLS):
                xa = gl.load(a_ptrs + c * AMAX_COLS, mask=gl.expand_dims(a_rows < M, 1), other=0.0)
                amax = gl.maximum(amax, gl.max(gl.abs(xa.to(gl.float32)), axis=1),
                                  propagate_nan=tl.PropagateNan.ALL)
            # the scales move to the q layout's rows (MP >= MROWS) through shared memory
            scale_smem.slice(0, MROWS).store(gl.maximum(amax * INV_FP8_MAX, SCALE_FLOOR))
            cta_barrier()
            scale = scale_smem.load(gl.SliceLayout(1, XQ_REG_LAYOUT))
            scale = gl.where(q_rows < M, scale, SCALE_FLOOR)  # rows past M: never stored (their x is 0)
            q = _divide_by_row_scale(x_slice.to(gl.float32), gl.expand_dims(scale, 1))
            q = gl.minimum(gl.maximum(q, -FP8_MAX, propagate_nan=tl.PropagateNan.ALL), FP8_MAX,
                           propagate_nan=tl.PropagateNan.ALL)
            xq_smem.store(q.to(w_desc.dtype))
        else:
            # 2'. x is already fp8 (per_token_quant_fp8's output) with its scales in xs_ptr
            xq_smem.store(x_slice)
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
        if QUANT:
            xs = gl.where(m_idx < M, scale_smem.load(gl.SliceLayout(0, mma_layout)), 0.0)
        else:
            xs = gl.load(xs_ptr + m_idx, mask=m_idx < M, other=0.0)
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


def unsupported_reason(x2: torch.Tensor, wq: torch.Tensor, stages: int, split_k: int) -> str | None:
    """Why this kernel cannot run the call (None: it can)."""
    M, K = x2.shape
    if not available(x2.device):
        return "needs an sm_90 GPU and a Triton with Gluon"
    if not 0 < M <= MAX_M:
        return f"M = {M}: this kernel takes 1..{MAX_M} rows"
    if wq.dtype != torch.float8_e4m3fn or x2.dtype not in (torch.bfloat16, torch.float16, torch.float32,
                                                          torch.float8_e4m3fn):
        return "float8_e4m3fn weight and bf16 / fp16 / fp32 (or float8_e4m3fn, quantized) x only"
    mrows, mp, ks, amax_cols = shapes(M, K, split_k)
    if K % (BLOCK_K * split_k) or K % amax_cols or ks & (ks - 1):
        return f"K = {K}: split_k {split_k} must leave a power-of-two slice of whole {BLOCK_K}-wide boxes"
    if mp * ks > SLICE_ELEMENTS:
        return f"a {mp} x {ks} slice of x is more than {SLICE_ELEMENTS} elements: raise split_k"
    if shared_bytes(K, mp, stages, split_k) > SMEM_LIMIT:
        return f"K = {K} with {stages} stages needs more than {SMEM_LIMIT} bytes of shared memory"
    return None


def ptpc_linear_small_m_gluon(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                              fp8_max: float, stages: int = 4, split_k: int = 4) -> torch.Tensor:
    """ptpc_linear in one launch for M <= 16 rows: x [..., K], wq [N, K] fp8, w_scale [N, 1] fp32 -> [..., N]
    in x's dtype."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = _launch(x2, None, wq, w_scale, bias, x.dtype, fp8_max, stages, split_k, quant=True, pdl=False)
    return out.reshape(*x.shape[:-1], wq.shape[0])


def ptpc_scaled_mm_small_m_gluon(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                                 bias: torch.Tensor | None, out_dtype: torch.dtype, stages: int = 4, split_k: int = 4,
                                 pdl: bool = False) -> torch.Tensor:
    """ptpc_scaled_mm for M <= 16 rows: xq [M, K] fp8 with x_scale [M, 1]. pdl (sm_90): launched as the dependent
    of the quant kernel (which called launch_dependents); the weight stream starts before the wait."""
    return _launch(xq.contiguous(), x_scale.reshape(-1).contiguous(), wq, w_scale, bias, out_dtype, 448.0, stages,
                   split_k, quant=False, pdl=pdl)


def _launch(x2, xs, wq, w_scale, bias, out_dtype, fp8_max, stages, split_k, quant, pdl):
    K = x2.shape[-1]
    N = wq.shape[0]
    reason = unsupported_reason(x2, wq, stages, split_k)
    if reason is not None:
        raise ValueError(f"ptpc_linear_small_m_gluon: {reason}")
    M = x2.shape[0]
    mrows, mp, ks, amax_cols = shapes(M, K, split_k)
    wq = wq if wq.is_contiguous() else wq.contiguous()
    ws = w_scale.reshape(N).contiguous()
    out = torch.empty((M, N), dtype=out_dtype, device=x2.device)
    w_layout, xq_layout, xa_layout, xq_reg_layout = _layouts(mrows, mp, ks, amax_cols)
    w_desc = TensorDescriptor.from_tensor(wq, [BLOCK_N, BLOCK_K], w_layout)
    tiles = launch_cache.cdiv(N, BLOCK_N)
    if split_k > 1:
        from .ptpc_gemm_small_m import _counters
        counters = _counters(x2.device, launch_cache.cdiv(N, 16))
        if counters is None:
            raise RuntimeError("ptpc_linear_small_m_gluon: no split-K counters during this CUDA-graph capture")
        partials = torch.empty((split_k, M, N), dtype=torch.float32, device=x2.device)
    else:
        counters, partials = ws, out
    args = (x2, xs if xs is not None else ws, w_desc, ws, bias if bias is not None else ws, out, partials, counters,
            M, N, x2.stride(0), out.stride(0))
    constexprs = dict(QUANT=quant, PDL=pdl, K=K, MROWS=mrows, MP=mp, AMAX_COLS=amax_cols, STAGES=stages,
                      SPLIT_K=split_k, FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max),
                      SCALE_FLOOR=scale_floor(fp8_max), HAS_BIAS=bias is not None,
                      XA_LAYOUT=xa_layout, XQ_REG_LAYOUT=xq_reg_layout, XQ_LAYOUT=xq_layout)
    launch_cache.launch(_COMPILED, _ptpc_linear_small_m_gluon_kernel, (tiles, split_k), args, constexprs,
                        num_warps=4, launch_pdl=pdl)
    return out


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
