"""Triton paged decode: one query per sequence over its paged KV cache, both layouts.

One program = one (sequence, KV head, split). The GQA query heads of that KV head form the rows
of one tile (padded to 16 for tl.dot), so each K/V byte is read once per step. Keys are walked in
tiles of BLOCK_N tokens (several cache pages; each token finds its page in the block table), tile
t covering keys [t * BLOCK_N, (t + 1) * BLOCK_N).

Wide loads: the compiler vectorises a load only along an axis where it can prove 8 consecutive
elements are contiguous AND equally masked. The shuffled V ([blk, h, PAGE//x, D, x]) is contiguous
along the token axis, so (1) the page id loaded from the block table carries a constancy hint of
PAGE tokens, and (2) tiles wholly inside the visible keys are loaded without a mask; the one or
two edge tiles are loaded with a page-granular mask and the invisible keys are cut afterwards
(scores to -inf, V rows to 0: the rest of a valid page may hold anything, even NaN).

When B * Hkv programs cannot fill the GPU, each sequence's tiles are cut into num_splits ranges
(split-KV): each writes a normalised partial output and its log2-sum-exp, and a small reduce
kernel merges them. With one split the kernel writes the output directly.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from . import launch_cache
from .flash_attention import LOG2E, _tanh

# Defaults for an H100-class GPU (bf16/fp16, D <= 128); benchmarks/tune_decode.py sweeps them.
DEFAULT_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
# Without split-KV (the batch fills the GPU) each program walks a whole sequence: 128-key tiles keep more
# bytes in flight. H100, 64 x 4k standard: 0.359 ms (0.98x SDPA) vs 0.426 ms with BLOCK_N 64. Bf16/fp16 with
# D <= 128 only (3 stages of 128 x 128 K and V tiles: 192 KB of shared memory).
NO_SPLIT_BLOCK_N = 128
FP32_CONFIG = {"BLOCK_N": 32, "num_warps": 8, "num_stages": 2}  # fp32 (ieee dots): 4 warps spill on sm_90
INTERPRET_CONFIG = {"BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
MIN_SPLIT_TOKENS = 256  # a split reads at least this many keys (partials + reduce stay negligible)
FILL_PROGRAMS_PER_SM = 3  # at least this many programs per SM without splitting
SPLIT_PROGRAMS_PER_SM = 8  # when splitting, aim for this many (small tail wave)
MAX_SPLITS = 64


@triton.jit
def _decode_tile(
    acc, l_i, m_i, q, tile, k_base, v_base, bt, k_d, v_d, d_ok, lo, seq_len,
    stride_kb, stride_kt, stride_vb, stride_vt,
    qk_scale, softcap_scale, softcap_out,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr, PAGE_RUN: tl.constexpr, X: tl.constexpr,
    SHUFFLED: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, SOFTCAP: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    page_of_n = n // PAGE
    if MASKED:
        # page-granular: equal over the PAGE tokens of a page, so the loads stay vectorised
        page_ok = (page_of_n >= lo // PAGE) & (page_of_n < tl.cdiv(seq_len, PAGE))
        blk = tl.load(bt + page_of_n, mask=page_ok, other=0).to(tl.int64)
    else:
        blk = tl.load(bt + page_of_n).to(tl.int64)
    blk = tl.max_constancy(blk, PAGE_RUN)  # one page id per run of tokens: lets V load 16 bytes along tokens
    off = n % PAGE
    if SHUFFLED:
        k_tok = blk * stride_kb + off * X  # k [blk, h, D//x, PAGE, x]
        # v [blk, h, PAGE//x, D, x]; written from n, not from off (the compiler loses the contiguity of
        # (n % PAGE) % X and would load V 2 bytes at a time)
        v_tok = blk * stride_vb + ((n // X) % (PAGE // X)) * (HEAD_D * X) + n % X
    else:
        k_tok = blk * stride_kb + off * stride_kt
        v_tok = blk * stride_vb + off * stride_vt
    k_ptrs = k_base + k_tok[None, :] + k_d[:, None]  # K^T tile [BLOCK_D, BLOCK_N]
    v_ptrs = v_base + v_tok[:, None] + v_d[None, :]  # V tile [BLOCK_N, BLOCK_D]
    if MASKED:
        k = tl.load(k_ptrs, mask=page_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=page_ok[:, None] & d_ok[None, :], other=0.0)
    elif HEAD_D != BLOCK_D:
        k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    qk = tl.dot(q, k, input_precision=DOT_PREC)  # [GROUP_PAD, BLOCK_N] fp32
    if SOFTCAP:
        qk = _tanh(qk * softcap_scale) * softcap_out
    else:
        qk = qk * qk_scale
    if MASKED:
        n_ok = (n >= lo) & (n < seq_len)
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        v = tl.where(n_ok[:, None], v, 0.0)  # 0 * garbage (NaN) would poison the row
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["window", "num_splits"])
def _paged_decode_kernel(
    Q, KC, VC, SEQ_LENS, BT, O, PART_O, PART_LSE,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_btb,
    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    qk_scale, softcap_scale, softcap_out, window, num_splits,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr, PAGE_RUN: tl.constexpr, X: tl.constexpr,
    SHUFFLED: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    lo = 0
    if WINDOW:
        lo = tl.maximum(seq_len - window, 0)  # the query at seq_len - 1 sees keys > seq_len - 1 - W
    # this split's tiles [t0, t1); unmasked tiles [full_lo, full_hi) lie wholly inside [lo, seq_len)
    tile_lo = lo // BLOCK_N
    per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N) - tile_lo, num_splits)
    t0 = tile_lo + split * per_split
    t1 = tl.minimum(t0 + per_split, tl.cdiv(seq_len, BLOCK_N))
    full_lo = tl.maximum(t0, tl.cdiv(lo, BLOCK_N))
    full_hi = tl.maximum(tl.minimum(t1, seq_len // BLOCK_N), full_lo)
    head_hi = tl.minimum(full_lo, t1)
    tail_lo = tl.maximum(full_hi, head_hi)

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
    for tile in range(t0, head_hi):  # a window's first tile
        acc, l_i, m_i = _decode_tile(acc, l_i, m_i, q, tile, k_base, v_base, bt, k_d, v_d, d_ok, lo, seq_len,
                                     stride_kb, stride_kt, stride_vb, stride_vt, qk_scale, softcap_scale,
                                     softcap_out, HEAD_D, BLOCK_D, PAGE, PAGE_RUN, X, SHUFFLED, BLOCK_N, True, SOFTCAP,
                                     DOT_PREC)
    for tile in range(full_lo, full_hi):
        acc, l_i, m_i = _decode_tile(acc, l_i, m_i, q, tile, k_base, v_base, bt, k_d, v_d, d_ok, lo, seq_len,
                                     stride_kb, stride_kt, stride_vb, stride_vt, qk_scale, softcap_scale,
                                     softcap_out, HEAD_D, BLOCK_D, PAGE, PAGE_RUN, X, SHUFFLED, BLOCK_N, False, SOFTCAP,
                                     DOT_PREC)
    for tile in range(tail_lo, t1):  # the sequence's last, partial tile
        acc, l_i, m_i = _decode_tile(acc, l_i, m_i, q, tile, k_base, v_base, bt, k_d, v_d, d_ok, lo, seq_len,
                                     stride_kb, stride_kt, stride_vb, stride_vt, qk_scale, softcap_scale,
                                     softcap_out, HEAD_D, BLOCK_D, PAGE, PAGE_RUN, X, SHUFFLED, BLOCK_N, True, SOFTCAP,
                                     DOT_PREC)

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if SPLIT:
        # partials: PART_O [B, Hq, num_splits, BLOCK_D] fp32, PART_LSE [B, Hq, num_splits] (log2 units)
        part = (b64 * tl.num_programs(1) * GROUP + heads) * num_splits + split
        tl.store(PART_O + part[:, None] * BLOCK_D + offs_d[None, :], out, mask=row_ok[:, None])
        lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(PART_LSE + part, lse2, mask=row_ok)
    else:
        tl.store(O + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["num_splits"])
def _paged_decode_reduce_kernel(
    PART_O, PART_LSE, O, stride_ob, stride_oh, num_splits,
    SPLITS_PAD: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    head = tl.program_id(1)
    row = b.to(tl.int64) * tl.num_programs(1) + head
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < num_splits
    lse = tl.load(PART_LSE + row * num_splits + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_safe)  # empty splits: weight 0
    parts = tl.load(PART_O + (row * num_splits + offs_s[:, None]) * BLOCK_D + offs_d[None, :],
                    mask=s_ok[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(O + b.to(tl.int64) * stride_ob + head * stride_oh + offs_d, out.to(O.dtype.element_ty),
             mask=offs_d < HEAD_D)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device,
                      block_n: int = DEFAULT_CONFIG["BLOCK_N"]) -> int:
    """1 when B * Hkv programs fill the GPU; else enough splits for ~SPLIT_PROGRAMS_PER_SM programs per
    SM (a small last wave), each split at least MIN_SPLIT_TOKENS keys (host ints only: no sync)."""
    sms = _num_sms(device.index or 0) if device.type == "cuda" else 2
    programs = batch * num_kv_heads
    if programs >= FILL_PROGRAMS_PER_SM * sms:
        return 1
    by_fill = launch_cache.cdiv(SPLIT_PROGRAMS_PER_SM * sms, programs)
    by_len = launch_cache.cdiv(max_context, max(MIN_SPLIT_TOKENS, block_n))
    return max(1, min(by_fill, by_len, MAX_SPLITS))


def decode_config(dtype: torch.dtype) -> dict:
    if triton_interpret():
        return dict(INTERPRET_CONFIG)
    return dict(FP32_CONFIG if dtype == torch.float32 else DEFAULT_CONFIG)


def paged_decode_launch(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0,
                        num_splits=None, config: dict | None = None, out: torch.Tensor | None = None):
    """out [B, Hq, D] (written in place when given). ``num_splits``: None = choose from the batch shape;
    ``config``: overrides of BLOCK_N / num_warps / num_stages (benchmarks/tune_decode.py)."""
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
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    cfg = decode_config(q.dtype)
    if config:
        cfg.update(config)
    if num_splits is None:
        max_context = block_table.shape[1] * page
        if sliding_window > 0:
            max_context = min(max_context, sliding_window)
        num_splits = choose_num_splits(B, hkv, max_context, q.device, cfg["BLOCK_N"])
    default_tile = cfg["BLOCK_N"] == DEFAULT_CONFIG["BLOCK_N"] and not (config and "BLOCK_N" in config)
    if num_splits == 1 and default_tile and d <= 128:  # (the fp32 / interpreter configs have other tiles)
        cfg["BLOCK_N"] = NO_SPLIT_BLOCK_N
    block_d = max(launch_cache.next_power_of_2(d), 16)
    if num_splits > 1:
        part_o = torch.empty(B, hq, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, hq, num_splits, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out
    if softcap > 0:
        qk_scale, softcap_scale, softcap_out = 0.0, scale / softcap, softcap * LOG2E
    else:
        qk_scale, softcap_scale, softcap_out = scale * LOG2E, 0.0, 0.0
    _paged_decode_kernel[(B, hkv, num_splits)](
        q, k_cache, v_cache, seq_lens, block_table, out, part_o, part_lse,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        k_cache.stride(0), k_cache.stride(1) if shuffled else k_cache.stride(2), stride_kt,
        v_cache.stride(0), v_cache.stride(1) if shuffled else v_cache.stride(2), stride_vt,
        float(qk_scale), float(softcap_scale), float(softcap_out), int(sliding_window), int(num_splits),
        GROUP=group, GROUP_PAD=max(16, launch_cache.next_power_of_2(group)),
        HEAD_D=d, BLOCK_D=block_d, PAGE=page, X=x, SHUFFLED=shuffled,
        PAGE_RUN=math.gcd(page, cfg["BLOCK_N"]),  # tile-aligned runs of tokens that share a page
        BLOCK_N=cfg["BLOCK_N"], SPLIT=num_splits > 1,
        WINDOW=sliding_window > 0, SOFTCAP=softcap > 0,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if num_splits > 1:
        _paged_decode_reduce_kernel[(B, hq)](
            part_o, part_lse, out, out.stride(0), out.stride(1), int(num_splits),
            SPLITS_PAD=max(launch_cache.next_power_of_2(num_splits), 2), HEAD_D=d, BLOCK_D=block_d, num_warps=4,
        )
    return out
