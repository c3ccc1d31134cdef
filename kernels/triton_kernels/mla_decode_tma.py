"""Triton MLA decode stage 1 fed by TMA (Hopper tensor descriptors): the absorbed-form decode of
mla_decode.py, with each tile of latent rows copied into shared memory by the TMA engine and read there
by both products.

Why a second kernel: mla_decode.py gathers each tile through per-row pointers, so every element passes
through registers on its way to shared memory, and its best tile (32 heads, mma.sync) reached 33% of the
copy bandwidth at 128 heads (RESULTS, Session 10). Here one program owns 64 heads (a wgmma tile over two
warp groups), the latent rows of one tile arrive by three descriptor loads (two 256-wide value halves and
the rope part: a TMA box is at most 256 elements wide) into a double buffer, and QK^T and P @ V read the
same shared-memory copy.

The page layout permits this: a tile of BLOCK_N tokens starts at a multiple of BLOCK_N and pages are a
multiple of BLOCK_N long, so a tile is BLOCK_N consecutive rows of one page, i.e. one descriptor load at
(block * page_size + offset, column). The last tile of a split, when partial, is loaded through masked
pointers instead: the rows past the sequence's end are whatever the page holds (possibly NaN in a fresh
cache) and must never reach the product.

Eligibility (tma_unsupported_reason): an NVIDIA GPU with TMA (sm_90+) or the interpreter, 16-bit dtypes on
the GPU, contiguous q and cache with 16-byte aligned rows, heads a multiple of BLOCK_H, pages a multiple of
BLOCK_N, kv_lora_rank / 2 and the rope width powers of two in [16, 256]. mla_decode_launch adds the TMA
configs (DecodeConfig.kernel "tma") to the candidates it times only when they are eligible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..platform import triton_interpret
from . import launch_cache
from .mla_decode import reduce_splits, split_partials

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q0, q1, q_pe, kv0, kv1, k_pe, valid, qk_scale, m_i, l_i, acc0, acc1, MASKED: tl.constexpr):
    """One tile of the online softmax: scores over the whole latent row, then both value halves."""
    s = tl.dot(q0, kv0.T)
    s = tl.dot(q1, kv1.T, s)
    s = tl.dot(q_pe, k_pe.T, s) * qk_scale
    if MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds at least one valid row
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(kv0.dtype)
    acc0 = tl.dot(p, kv0, acc0 * alpha[:, None])
    acc1 = tl.dot(p, kv1, acc1 * alpha[:, None])
    return m_new, l_i, acc0, acc1


@triton.jit
def _mla_decode_tma_kernel(
    q_half_desc, q_rope_desc, kv_half_desc, k_rope_desc, CACHE, SEQ_LENS, BLOCK_TABLE,
    MID_O, MID_LSE, OUT, LSE,
    stride_bt, stride_mo_b, stride_mo_h, stride_mo_s, stride_ml_b, stride_ml_h,
    stride_ob, stride_oh, stride_lse_h,
    qk_scale,
    H: tl.constexpr, PAGE: tl.constexpr, L: tl.constexpr, R: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    LH: tl.constexpr = L // 2
    W: tl.constexpr = L + R
    head_group = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    b = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N  # whole tiles per split
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N

    q_row = b * H + head_group * BLOCK_H
    q0 = q_half_desc.load([q_row, 0])
    q1 = q_half_desc.load([q_row, LH])
    q_pe = q_rope_desc.load([q_row, L])
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc0 = tl.zeros([BLOCK_H, LH], tl.float32)
    acc1 = tl.zeros([BLOCK_H, LH], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    bt_row = BLOCK_TABLE + b.to(tl.int64) * stride_bt
    for n0 in tl.range(start, full_end, BLOCK_N, num_stages=STAGES):
        row = tl.load(bt_row + n0 // PAGE) * PAGE + n0 % PAGE
        kv0 = kv_half_desc.load([row, 0])
        kv1 = kv_half_desc.load([row, LH])
        k_pe = k_rope_desc.load([row, L])
        m_i, l_i, acc0, acc1 = _attend_tile(q0, q1, q_pe, kv0, kv1, k_pe, offs_n, qk_scale,
                                            m_i, l_i, acc0, acc1, MASKED=False)
    if full_end < end:  # the partial last tile: masked pointer loads, so rows past the end read as 0
        pos = full_end + offs_n
        valid = pos < end
        blk = tl.load(bt_row + pos // PAGE, mask=valid, other=0).to(tl.int64)
        rows = CACHE + (blk * PAGE + pos % PAGE) * W
        offs_half = tl.arange(0, LH)
        kv0 = tl.load(rows[:, None] + offs_half[None, :], mask=valid[:, None], other=0.0)
        kv1 = tl.load(rows[:, None] + LH + offs_half[None, :], mask=valid[:, None], other=0.0)
        k_pe = tl.load(rows[:, None] + L + tl.arange(0, R)[None, :], mask=valid[:, None], other=0.0)
        m_i, l_i, acc0, acc1 = _attend_tile(q0, q1, q_pe, kv0, kv1, k_pe, valid, qk_scale,
                                            m_i, l_i, acc0, acc1, MASKED=True)

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
    offs_h = head_group * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_v = tl.arange(0, LH)
    if num_splits == 1:
        o_ptr = OUT + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_v[None, :]
        tl.store(o_ptr, (acc0 / l_safe[:, None]).to(OUT.dtype.element_ty))
        tl.store(o_ptr + LH, (acc1 / l_safe[:, None]).to(OUT.dtype.element_ty))
        tl.store(LSE + offs_h * stride_lse_h + b, lse2 * 0.6931471805599453)
    else:
        mo = (MID_O + b.to(tl.int64) * stride_mo_b + offs_h[:, None].to(tl.int64) * stride_mo_h
              + split * stride_mo_s + offs_v[None, :])
        tl.store(mo, acc0 / l_safe[:, None])
        tl.store(mo + LH, acc1 / l_safe[:, None])
        tl.store(MID_LSE + b.to(tl.int64) * stride_ml_b + offs_h * stride_ml_h + split, lse2)


def _power_of_two_in(v: int, lo: int, hi: int) -> bool:
    return lo <= v <= hi and v & (v - 1) == 0


def tma_unsupported_reason(q: torch.Tensor, latent_cache: torch.Tensor, kv_lora_rank: int, block_h: int,
                           block_n: int) -> str | None:
    """Why the TMA kernel cannot run this call (None: it can)."""
    L, R = kv_lora_rank, q.shape[-1] - kv_lora_rank
    if not triton_interpret():
        if q.device.type != "cuda" or torch.version.hip is not None:
            return "needs an NVIDIA GPU (Hopper TMA)"
        if torch.cuda.get_device_capability(q.device)[0] < 9:
            return "needs TMA (sm_90 or newer)"
        if q.dtype not in (torch.bfloat16, torch.float16):
            return f"{q.dtype} tiles do not fit shared memory (bf16 / fp16 only)"
    if L % 2 or not _power_of_two_in(L // 2, 16, 256):
        return f"kv_lora_rank / 2 = {L / 2:g} is not a power of two in [16, 256] (one TMA box per value half)"
    if not _power_of_two_in(R, 16, 256):
        return f"qk_rope_head_dim = {R} is not a power of two in [16, 256]"
    if q.shape[1] % block_h:
        return f"{q.shape[1]} heads are not a multiple of the {block_h}-head tile"
    if latent_cache.shape[1] % block_n:
        return f"block_size {latent_cache.shape[1]} is not a multiple of the {block_n}-token tile"
    return tma_layout_reason(q, latent_cache)


def tma_layout_reason(q: torch.Tensor, latent_cache: torch.Tensor) -> str | None:
    """q [B, H, W] and the cache [blocks, page, W] as TMA reads them: contiguous, 16-byte aligned rows."""
    if not (q.is_contiguous() and latent_cache.is_contiguous()):
        return "q and the latent cache must be contiguous"
    if q.shape[-1] * q.element_size() % 16 or q.data_ptr() % 16 or latent_cache.data_ptr() % 16:
        return "rows must be 16-byte aligned"
    return None


def launch_tma(q, latent_cache, seq_lens, block_table, scale, L, cfg, splits, out, lse,
               reduce_heads=1) -> None:
    """Stage 1 (TMA) and, with splits > 1, the reduce; writes out [B, H, L] and lse [H, B]."""
    B, H, W = q.shape
    R = W - L
    num_blocks, page, _ = latent_cache.shape
    reason = tma_unsupported_reason(q, latent_cache, L, cfg.block_h, cfg.block_n)
    if reason:
        raise ValueError(f"mla_decode: config {cfg.name} cannot run here: {reason}")
    q2d, cache2d = q.view(B * H, W), latent_cache.view(num_blocks * page, W)
    q_half = TensorDescriptor.from_tensor(q2d, [cfg.block_h, L // 2])
    q_rope = TensorDescriptor.from_tensor(q2d, [cfg.block_h, R])
    kv_half = TensorDescriptor.from_tensor(cache2d, [cfg.block_n, L // 2])
    k_rope = TensorDescriptor.from_tensor(cache2d, [cfg.block_n, R])
    mid_o, mid_lse, mo_strides, ml_strides = split_partials(out, lse, splits)
    args = (q_half, q_rope, kv_half, k_rope, latent_cache, seq_lens, block_table, mid_o, mid_lse, out, lse,
            block_table.stride(0), *mo_strides, *ml_strides, out.stride(0), out.stride(1), lse.stride(0),
            float(scale) * LOG2E)
    # the constexprs in the kernel's order: the compiled kernel takes them positionally (launch_cache.py)
    constexprs = dict(H=H, PAGE=page, L=L, R=R, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
                      STAGES=cfg.num_stages)
    launch_cache.launch(_COMPILED, _mla_decode_tma_kernel, (H // cfg.block_h, splits, B), args, constexprs,
                        num_warps=cfg.num_warps)
    if splits > 1:
        reduce_splits(mid_o, mid_lse, out, lse, splits, reduce_heads)


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)
