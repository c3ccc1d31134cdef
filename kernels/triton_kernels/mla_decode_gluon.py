"""Gluon (Triton's low-level dialect) warp-specialized MLA decode stage 1 for Hopper.

Why it exists: at 128 heads MLA decode does ~240 flop per latent-cache byte, about the H100's ridge point, so
reaching the copy bandwidth needs the tensor cores busy most of the time. The Triton TMA kernel
(mla_decode_tma.py, 46-48% of copy) cannot get there: Triton gives a chained QK -> PV dot over 8 warps the
layout that splits M across warps, so with 64 heads both warp groups compute the same 64 x 64 scores (the QK
half of the work done twice), and every wgmma is waited on before the next is issued.

Here the roles are explicit (FlashMLA's split, simplified):
  - a one-warp producer streams each 64-token tile of latent rows with TMA into a double buffer;
  - warp group 0 computes the scores once (S = q @ K^T over the whole 576-wide row), the online softmax,
    writes P (bf16) and the rescale factor alpha to shared memory, then adds P @ V[:, :L/2];
  - warp group 1 adds P @ V[:, L/2:] from the same shared P and the same tile.
So each warp group keeps a 64 x 256 fp32 accumulator (128 registers), QK is done once, and group 1's
product overlaps group 0's next QK. The K tile is V (the latent row's first L columns): one copy in shared
memory serves both products.

Shared memory (L 512, R 64, bf16): q 72 KB + 2 stages x 72 KB + P 8 KB = 224 KB of the H100's 227.
The last tile of a split, when partial, holds rows past the sequence's end (anything, NaN in a fresh cache):
group 0 zeroes them in shared memory before either P @ V reads them (the scores are masked anyway).

Heads: 64 per program. With fewer (tensor parallel: DeepSeek-V3's 128 heads over 8 GPUs leave 16), or a count
that is not a multiple of 64, a program's q tile also holds the next sequence's rows (or TMA's zero fill past
the end): they cost MMA work, not memory traffic, and their outputs are not stored.

Tile and ring: 64 tokens x 2 stages. launch_gluon(block_n=, stages=) builds other ones; smaller tiles in a
deeper ring (32 x 4, 16 x 8) are correct but 20-40% slower on an H100 (benchmarks/RESULTS.md, Session 14).

Needs sm_90 and a Triton with Gluon (3.6 and newer); `available()` says whether it can run here.
"""

from __future__ import annotations

import functools

import torch

from . import launch_cache
from .mla_decode_tma import tma_layout_reason

# Gluon's imports, its TMA-load name across Triton versions and available() (sm_90 with Gluon importable,
# cached per device) are the Gluon GEMM's
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

BLOCK_H = 64  # heads per program: one wgmma M tile per warp group
BLOCK_N = 64  # latent rows (tokens) per tile (the launcher's; launch_gluon takes others)
STAGES = 2  # tiles in flight
CONSUMER_REGS = 232  # registers per consumer thread after setmaxnreg (the producer warp keeps 24)
LOG2E = 1.4426950408889634


def unsupported_reason(q: torch.Tensor, latent_cache: torch.Tensor, kv_lora_rank: int,
                       block_n: int = BLOCK_N) -> str | None:
    """Why this kernel cannot run the call (None: it can)."""
    L, R = kv_lora_rank, q.shape[-1] - kv_lora_rank
    if not available(q.device):
        return "needs an sm_90 GPU and a Triton with Gluon"
    if q.dtype not in (torch.bfloat16, torch.float16) or latent_cache.dtype != q.dtype:
        return "bf16 / fp16 q and cache only"
    if L != 512 or R != 64:
        return f"kv_lora_rank {L} / rope {R}: built and measured for 512 / 64 (DeepSeek-V2/V3, Kimi K2)"
    if latent_cache.shape[1] % block_n:
        return f"block_size {latent_cache.shape[1]} is not a multiple of {block_n}"
    return tma_layout_reason(q, latent_cache)


if HAVE_GLUON:
    _BLOCK_H = gl.constexpr(BLOCK_H)

    @gluon.jit
    def _program_tokens(seq_lens_ptr, BN: gl.constexpr):
        """This program's (head group, split, splits, sequence) and its tokens [start, end): whole BN-token
        tiles per split, the last one partial."""
        head_group = gl.program_id(0)
        split = gl.program_id(1)
        num_splits = gl.num_programs(1)
        b = gl.program_id(2)
        seq_len = gl.load(seq_lens_ptr + b)
        split_len = gl.cdiv(gl.cdiv(seq_len, num_splits), BN) * BN
        start = split * split_len
        end = gl.minimum(start + split_len, seq_len)
        return head_group, split, num_splits, b, start, end

    # Every partition gets the same arguments (worker partitions share one signature); the tile shapes travel
    # in the shared-memory types. kv_lo / kv_hi: [STAGES, BN, L/2] value halves, k_pe: [STAGES, BN, R].

    @gluon.jit
    def _producer(q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc, q_lo, q_hi, q_pe, kv_lo, kv_hi, k_pe,
                  p_smem, alpha_smem, q_bar, kv_ready, kv_empty, p_full, p_empty, fin_bar,
                  seq_lens_ptr, block_table_ptr, stride_bt, page, out_ptr, lse_ptr, mid_o_ptr, mid_lse_ptr,
                  stride_ob, stride_oh, stride_lse_h, stride_mo_b, stride_mo_h, stride_mo_s, stride_ml_b,
                  stride_ml_h, qk_scale, num_heads):
        NUM_STAGES: gl.constexpr = kv_ready.type.shape[0]
        BN: gl.constexpr = kv_lo.type.shape[1]
        LH: gl.constexpr = kv_lo.type.shape[2]
        head_group, split, num_splits, b, start, end = _program_tokens(seq_lens_ptr, BN)
        q_row = b * num_heads + head_group * _BLOCK_H
        mbarrier.expect(q_bar, 2 * q_half_desc.block_type.nbytes + q_rope_desc.block_type.nbytes)
        tma_load(q_half_desc, [q_row, 0], q_bar, q_lo)
        tma_load(q_half_desc, [q_row, LH], q_bar, q_hi)
        tma_load(q_rope_desc, [q_row, 2 * LH], q_bar, q_pe)
        bt_row = block_table_ptr + b.to(gl.int64) * stride_bt
        t = 0
        for n0 in range(start, end, BN):
            s = t % NUM_STAGES
            mbarrier.wait(kv_empty.index(s), ((t // NUM_STAGES) & 1) ^ 1)  # both groups are done with it
            row = gl.load(bt_row + n0 // page) * page + n0 % page
            bar = kv_ready.index(s)
            mbarrier.expect(bar, 2 * kv_half_desc.block_type.nbytes + k_rope_desc.block_type.nbytes)
            tma_load(kv_half_desc, [row, 0], bar, kv_lo.index(s))
            tma_load(kv_half_desc, [row, LH], bar, kv_hi.index(s))
            tma_load(k_rope_desc, [row, 2 * LH], bar, k_pe.index(s))
            t += 1

    @gluon.jit
    def _zero_rows_past(buf, valid_rows):
        """Rows >= valid_rows of a [BN, W] shared tile := 0 (16 rows at a time: few registers)."""
        ROWS: gl.constexpr = buf.type.shape[0]
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
        for r0 in gl.static_range(0, ROWS, 16):
            part = buf.slice(r0, 16, dim=0)
            x = part.load(layout)
            rows = r0 + gl.arange(0, 16, layout=gl.SliceLayout(1, layout))
            x = gl.where(gl.expand_dims(rows < valid_rows, 1), x, gl.zeros_like(x))
            part.store(x)

    @gluon.jit
    def _store_output(acc, l_i, col0, b, split, head_group, num_splits, num_heads, out_ptr, mid_o_ptr,
                      stride_ob, stride_oh, stride_mo_b, stride_mo_h, stride_mo_s, layout: gl.constexpr):
        """acc / l into out (one split) or the fp32 partial (several); rows past num_heads are dropped."""
        LH: gl.constexpr = acc.type.shape[1]
        l_safe = gl.where(l_i > 0.0, l_i, 1.0)
        heads = head_group * _BLOCK_H + gl.arange(0, _BLOCK_H, layout=gl.SliceLayout(1, layout))
        cols = col0 + gl.arange(0, LH, layout=gl.SliceLayout(0, layout))
        mask = gl.expand_dims(heads < num_heads, 1) & gl.expand_dims(cols >= 0, 0)
        out = acc / gl.expand_dims(l_safe, 1)
        if num_splits == 1:
            o_ptr = (out_ptr + b.to(gl.int64) * stride_ob + gl.expand_dims(heads * stride_oh, 1)
                     + gl.expand_dims(cols, 0))
            gl.store(o_ptr, out.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            m_ptr = (mid_o_ptr + b.to(gl.int64) * stride_mo_b
                     + gl.expand_dims(heads.to(gl.int64) * stride_mo_h, 1) + split * stride_mo_s
                     + gl.expand_dims(cols, 0))
            gl.store(m_ptr, out, mask=mask)

    @gluon.jit
    def _scores_softmax_pv(q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc, q_lo, q_hi, q_pe, kv_lo,
                           kv_hi, k_pe, p_smem, alpha_smem, q_bar, kv_ready, kv_empty, p_full, p_empty,
                           fin_bar, seq_lens_ptr, block_table_ptr, stride_bt, page, out_ptr, lse_ptr,
                           mid_o_ptr, mid_lse_ptr, stride_ob, stride_oh, stride_lse_h, stride_mo_b,
                           stride_mo_h, stride_mo_s, stride_ml_b, stride_ml_h, qk_scale, num_heads):
        # warp group 0 (the default partition)
        NUM_STAGES: gl.constexpr = kv_ready.type.shape[0]
        BN: gl.constexpr = kv_lo.type.shape[1]
        LH: gl.constexpr = kv_lo.type.shape[2]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BN, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, LH, 16])
        head_group, split, num_splits, b, start, end = _program_tokens(seq_lens_ptr, BN)
        m_i = gl.full([_BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([_BLOCK_H], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([_BLOCK_H, LH], gl.float32, o_layout)
        s_zero = gl.zeros([_BLOCK_H, BN], gl.float32, s_layout)
        mbarrier.wait(q_bar, 0)
        t = 0
        for n0 in range(start, end, BN):
            s = t % NUM_STAGES
            mbarrier.wait(kv_ready.index(s), (t // NUM_STAGES) & 1)
            # scores over the whole latent row: three async wgmmas into one accumulator, one wait
            sc = warpgroup_mma(q_lo, kv_lo.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            sc = warpgroup_mma(q_hi, kv_hi.index(s).permute((1, 0)), sc, is_async=True)
            sc = warpgroup_mma(q_pe, k_pe.index(s).permute((1, 0)), sc, is_async=True)
            sc = warpgroup_mma_wait(0, deps=(sc,))
            sc = sc * qk_scale
            if n0 + BN > end:  # the partial last tile: mask the scores, zero the value rows
                cols = n0 + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
                sc = gl.where(gl.expand_dims(cols < end, 0), sc, float("-inf"))
                _zero_rows_past(kv_lo.index(s), end - n0)
                _zero_rows_past(kv_hi.index(s), end - n0)
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))  # finite: every tile has a valid row
            p = gl.exp2(sc - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            mbarrier.wait(p_empty, (t & 1) ^ 1)  # group 1 is done with the previous P and alpha
            p_smem.store(p.to(p_smem.dtype))
            alpha_smem.store(alpha)
            fence_async_shared()  # P (and zeroed rows) written here, read by wgmma (the async proxy)
            mbarrier.arrive(p_full, count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            acc = warpgroup_mma(p_smem, kv_lo.index(s), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(s), count=1)
            t += 1
        # hand l to group 1 (after it read the last alpha), then the lse and this half of the output
        mbarrier.wait(p_empty, (t & 1) ^ 1)
        alpha_smem.store(l_i)
        mbarrier.arrive(fin_bar, count=1)
        heads = head_group * _BLOCK_H + gl.arange(0, _BLOCK_H, layout=gl.SliceLayout(1, s_layout))
        seen = l_i > 0.0
        lse2 = gl.where(seen, m_i + gl.log2(gl.where(seen, l_i, 1.0)), float("-inf"))
        if num_splits == 1:
            gl.store(lse_ptr + heads * stride_lse_h + b, lse2 * 0.6931471805599453, mask=heads < num_heads)
        else:
            gl.store(mid_lse_ptr + b.to(gl.int64) * stride_ml_b + heads * stride_ml_h + split, lse2,
                     mask=heads < num_heads)
        _store_output(acc, gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 0, b, split, head_group,
                      num_splits, num_heads, out_ptr, mid_o_ptr, stride_ob, stride_oh, stride_mo_b,
                      stride_mo_h, stride_mo_s, o_layout)

    @gluon.jit
    def _second_half_pv(q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc, q_lo, q_hi, q_pe, kv_lo, kv_hi,
                        k_pe, p_smem, alpha_smem, q_bar, kv_ready, kv_empty, p_full, p_empty, fin_bar,
                        seq_lens_ptr, block_table_ptr, stride_bt, page, out_ptr, lse_ptr, mid_o_ptr,
                        mid_lse_ptr, stride_ob, stride_oh, stride_lse_h, stride_mo_b, stride_mo_h,
                        stride_mo_s, stride_ml_b, stride_ml_h, qk_scale, num_heads):
        # warp group 1: P @ V[:, L/2:] with group 0's P
        NUM_STAGES: gl.constexpr = kv_ready.type.shape[0]
        BN: gl.constexpr = kv_hi.type.shape[1]
        LH: gl.constexpr = kv_hi.type.shape[2]
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, LH, 16])
        head_group, split, num_splits, b, start, end = _program_tokens(seq_lens_ptr, BN)
        acc = gl.zeros([_BLOCK_H, LH], gl.float32, o_layout)
        row_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
        t = 0
        for n0 in range(start, end, BN):
            s = t % NUM_STAGES
            mbarrier.wait(kv_ready.index(s), (t // NUM_STAGES) & 1)
            mbarrier.wait(p_full, t & 1)
            alpha = alpha_smem.load(row_layout)
            acc = acc * gl.expand_dims(alpha, 1)
            acc = warpgroup_mma(p_smem, kv_hi.index(s), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(p_empty, count=1)
            mbarrier.arrive(kv_empty.index(s), count=1)
            t += 1
        mbarrier.wait(fin_bar, 0)
        l_i = alpha_smem.load(row_layout)
        _store_output(acc, l_i, LH, b, split, head_group, num_splits, num_heads, out_ptr, mid_o_ptr,
                      stride_ob, stride_oh, stride_mo_b, stride_mo_h, stride_mo_s, o_layout)

    @gluon.jit
    def _mla_decode_gluon_kernel(q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc,
                                 seq_lens_ptr, block_table_ptr, stride_bt, page, out_ptr, lse_ptr, mid_o_ptr,
                                 mid_lse_ptr, stride_ob, stride_oh, stride_lse_h, stride_mo_b, stride_mo_h,
                                 stride_mo_s, stride_ml_b, stride_ml_h, qk_scale, num_heads,
                                 NUM_STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr):
        LH: gl.constexpr = q_half_desc.block_type.shape[1]
        R: gl.constexpr = q_rope_desc.block_type.shape[1]
        BN: gl.constexpr = kv_half_desc.block_type.shape[0]
        dtype: gl.constexpr = q_half_desc.dtype
        q_lo = gl.allocate_shared_memory(dtype, [_BLOCK_H, LH], q_half_desc.layout)
        q_hi = gl.allocate_shared_memory(dtype, [_BLOCK_H, LH], q_half_desc.layout)
        q_pe = gl.allocate_shared_memory(dtype, [_BLOCK_H, R], q_rope_desc.layout)
        kv_lo = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, LH], kv_half_desc.layout)
        kv_hi = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, LH], kv_half_desc.layout)
        k_pe = gl.allocate_shared_memory(dtype, [NUM_STAGES, BN, R], k_rope_desc.layout)
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([_BLOCK_H, BN], dtype)
        p_smem = gl.allocate_shared_memory(dtype, [_BLOCK_H, BN], p_layout)
        alpha_smem = gl.allocate_shared_memory(gl.float32, [_BLOCK_H], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        kv_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        p_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        p_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        fin_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for s in gl.static_range(NUM_STAGES):
            mbarrier.init(kv_ready.index(s), count=1)
            mbarrier.init(kv_empty.index(s), count=2)  # both warp groups release a stage
        mbarrier.init(p_full, count=1)
        mbarrier.init(p_empty, count=1)
        mbarrier.init(fin_bar, count=1)
        args = (q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc, q_lo, q_hi, q_pe, kv_lo, kv_hi, k_pe,
                p_smem, alpha_smem, q_bar, kv_ready, kv_empty, p_full, p_empty, fin_bar,
                seq_lens_ptr, block_table_ptr, stride_bt, page, out_ptr, lse_ptr, mid_o_ptr, mid_lse_ptr,
                stride_ob, stride_oh, stride_lse_h, stride_mo_b, stride_mo_h, stride_mo_s, stride_ml_b,
                stride_ml_h, qk_scale, num_heads)
        gl.warp_specialize([
            (_scores_softmax_pv, args),
            (_second_half_pv, args),
            (_producer, args),
        ], [4, 1], [CONSUMER_REGS, 24])


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, cols: int, dtype_name: str):
    return gl.NVMMASharedLayout.get_default_for([rows, cols], getattr(gl, dtype_name))


def launch_gluon(q, latent_cache, seq_lens, block_table, scale, L, splits, out, lse, reduce_heads=1,
                 block_n=BLOCK_N, stages=STAGES, checked=False) -> None:
    """Stage 1 (this kernel) and, with splits > 1, mla_decode's reduce; writes out [B, H, L], lse [H, B].
    block_n tokens per tile in a ring of `stages` (their product x 1152 bytes + q's 72 KB must fit 227 KB).
    checked: the caller has already asked unsupported_reason (mla_decode_launch's candidates have)."""
    from .mla_decode import reduce_splits, split_partials

    if not checked:
        reason = unsupported_reason(q, latent_cache, L, block_n)
        if reason:
            raise ValueError(f"mla_decode (gluon): {reason}")
    B, H, W = q.shape
    R = W - L
    num_blocks, page, _ = latent_cache.shape
    name = "bfloat16" if q.dtype == torch.bfloat16 else "float16"
    q2d, cache2d = q.view(B * H, W), latent_cache.view(num_blocks * page, W)
    q_half = TensorDescriptor.from_tensor(q2d, [BLOCK_H, L // 2], _smem_layout(BLOCK_H, L // 2, name))
    q_rope = TensorDescriptor.from_tensor(q2d, [BLOCK_H, R], _smem_layout(BLOCK_H, R, name))
    kv_half = TensorDescriptor.from_tensor(cache2d, [block_n, L // 2], _smem_layout(block_n, L // 2, name))
    k_rope = TensorDescriptor.from_tensor(cache2d, [block_n, R], _smem_layout(block_n, R, name))
    mid_o, mid_lse, mo_strides, ml_strides = split_partials(out, lse, splits)
    seq_lens = seq_lens if seq_lens.dtype == torch.int32 else seq_lens.to(torch.int32)
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    args = (q_half, q_rope, kv_half, k_rope, seq_lens, block_table, block_table.stride(0), page, out, lse,
            mid_o, mid_lse, out.stride(0), out.stride(1), lse.stride(0), *mo_strides, *ml_strides,
            float(scale) * LOG2E, H)
    # after the first call of a specialization the compiled kernel is launched directly: the JIT path was a
    # third of an eager call's ~180 us of host time (H100, Session 15; launch_cache.py)
    launch_cache.launch(_COMPILED, _mla_decode_gluon_kernel, (-(-H // BLOCK_H), splits, B), args,
                        dict(NUM_STAGES=stages, CONSUMER_REGS=CONSUMER_REGS), num_warps=4, maxnreg=168)
    if splits > 1:
        reduce_splits(mid_o, mid_lse, out, lse, splits, reduce_heads)


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
