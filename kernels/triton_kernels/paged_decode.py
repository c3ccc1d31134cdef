"""Triton paged decode: one query per sequence over its paged KV cache, both layouts.

One program = one (sequence, KV head, split). The GQA query heads of that KV head form the rows
of one tile (padded to 16 for tl.dot), so each K/V byte is read once per step. Keys are walked in
tiles of BLOCK_N tokens spanning several cache blocks (each token finds its block in the block
table), so the tile size does not depend on the cache's block size.

When B * Hkv programs cannot fill the GPU, the context is cut into NUM_SPLITS segments (split-KV):
each writes a normalised partial output and its log2-sum-exp, and a small reduce kernel merges
them. With one split the kernel writes the output directly.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from .flash_attention import LOG2E, _tanh

BLOCK_N = 64
MIN_SPLIT_TOKENS = 512


@triton.jit
def _paged_decode_kernel(
    Q, KC, VC, SEQ_LENS, BT, O, PART_O, PART_LSE,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_btb,
    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    qk_scale, softcap_scale, softcap_out, window,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr, X: tl.constexpr,
    SHUFFLED: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    lo = 0
    if WINDOW:
        lo = tl.maximum(seq_len - window, 0)  # the query at seq_len - 1 sees keys > seq_len - 1 - W
    seg = tl.cdiv(tl.cdiv(seq_len - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * seg
    end = tl.minimum(start + seg, seq_len)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if SHUFFLED:
        k_d = (offs_d // X) * (PAGE * X) + offs_d % X  # k [blk, h, D//x, PAGE, x]
        v_d = offs_d * X  # v [blk, h, PAGE//x, D, x]
    else:
        k_d = offs_d
        v_d = offs_d
    k_base = KC + kv_head.to(tl.int64) * stride_kh
    v_base = VC + kv_head.to(tl.int64) * stride_vh
    bt = BT + b64 * stride_btb

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for s0 in range(start, end, BLOCK_N):
        n = s0 + offs_n
        n_ok = n < end
        blk = tl.load(bt + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        off = n % PAGE
        if SHUFFLED:
            k_tok = blk * stride_kb + off * X
            v_tok = blk * stride_vb + (off // X) * (HEAD_D * X) + off % X
        else:
            k_tok = blk * stride_kb + off * stride_kt
            v_tok = blk * stride_vb + off * stride_vt
        k = tl.load(k_base + k_tok[None, :] + k_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        qk = tl.dot(q, k, input_precision=DOT_PREC)
        if SOFTCAP:
            qk = _tanh(qk * softcap_scale) * softcap_out
        else:
            qk = qk * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + v_tok[:, None] + v_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if NUM_SPLITS == 1:
        tl.store(O + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    else:
        # partials: PART_O [B, Hq, NUM_SPLITS, BLOCK_D] fp32, PART_LSE [B, Hq, NUM_SPLITS] (log2 units)
        part = (b64 * tl.num_programs(1) * GROUP + heads) * NUM_SPLITS + split
        tl.store(PART_O + part[:, None] * BLOCK_D + offs_d[None, :], out, mask=row_ok[:, None])
        lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(PART_LSE + part, lse2, mask=row_ok)


@triton.jit
def _paged_decode_reduce_kernel(
    PART_O, PART_LSE, O, stride_ob, stride_oh,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    head = tl.program_id(1)
    row = b.to(tl.int64) * tl.num_programs(1) + head
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    lse = tl.load(PART_LSE + row * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_safe)  # empty splits: weight 0
    parts = tl.load(PART_O + (row * NUM_SPLITS + offs_s[:, None]) * BLOCK_D + offs_d[None, :],
                    mask=s_ok[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(O + b.to(tl.int64) * stride_ob + head * stride_oh + offs_d, out.to(O.dtype.element_ty),
             mask=offs_d < HEAD_D)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Split the context only when B * Hkv programs leave the GPU underfilled (aim: ~4 waves)."""
    sms = _num_sms(device.index or 0) if device.type == "cuda" else 2
    programs = batch * num_kv_heads
    if programs >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(4 * sms, programs), triton.cdiv(max_context, MIN_SPLIT_TOKENS), 64))


def paged_decode_launch(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0,
                        num_splits=None):
    if q.stride(-1) != 1:
        q = q.contiguous()
    B, hq, d = q.shape
    shuffled = layout == "shuffled"
    if shuffled:
        _, hkv, _, page, x = k_cache.shape
        stride_kt = stride_vt = 0
    else:
        _, page, hkv, _ = k_cache.shape
        x = 1
        stride_kt, stride_vt = k_cache.stride(1), v_cache.stride(1)
    group = hq // hkv
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    if num_splits is None:
        max_context = block_table.shape[1] * page
        if sliding_window > 0:
            max_context = min(max_context, sliding_window)
        num_splits = choose_num_splits(B, hkv, max_context, q.device)
    block_d = max(triton.next_power_of_2(d), 16)
    if num_splits > 1:
        part_o = torch.empty(B, hq, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, hq, num_splits, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out
    if softcap > 0:
        qk_scale, softcap_scale, softcap_out = 0.0, scale / softcap, softcap * LOG2E
    else:
        qk_scale, softcap_scale, softcap_out = scale * LOG2E, 0.0, 0.0
    interp = triton_interpret()
    _paged_decode_kernel[(B, hkv, num_splits)](
        q, k_cache, v_cache, seq_lens, block_table, out, part_o, part_lse,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        k_cache.stride(0), k_cache.stride(1) if shuffled else k_cache.stride(2), stride_kt,
        v_cache.stride(0), v_cache.stride(1) if shuffled else v_cache.stride(2), stride_vt,
        float(qk_scale), float(softcap_scale), float(softcap_out), int(sliding_window),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_D=d, BLOCK_D=block_d, PAGE=page, X=x, SHUFFLED=shuffled,
        BLOCK_N=16 if interp else BLOCK_N, NUM_SPLITS=num_splits,
        WINDOW=sliding_window > 0, SOFTCAP=softcap > 0,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=1 if interp else (2 if q.dtype == torch.float32 else 3),
    )
    if num_splits > 1:
        _paged_decode_reduce_kernel[(B, hq)](
            part_o, part_lse, out, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=max(triton.next_power_of_2(num_splits), 2), HEAD_D=d,
            BLOCK_D=block_d, num_warps=4,
        )
    return out
