"""Triton unified attention: one launch for a mixed batch (decode / extend / prefill) over the paged cache.

Grid (2D mode): (q-block upper bound, Hkv). Sequence b's q-blocks are numbered from
query_start_loc[b] // BLOCK_Q + b, so T // BLOCK_Q + B programs always cover every block; each
program finds its sequence by binary search over query_start_loc, and spare programs exit.
A program holds BLOCK_Q query tokens x the QPKV query heads of its KV head (GQA: the heads of
one KV head share every K/V load), i.e. BLOCK_M = BLOCK_Q * QPKV rows of one tl.dot.

Keys are walked in TILEs (any multiple of the page size or not: each key finds its page in the
block table). Tiles wholly visible to every row skip the mask; tiles past the last row's
position are never visited (causal skip); with a sliding window, tiles before the first row's
window are skipped. Softmax in base 2 with log2(e) folded into the scale.

Split-KV (3D) mode for decode batches too small to fill the GPU: a third grid axis splits each
sequence's tiles into NUM_SEGMENTS ranges; each writes an unnormalised partial (acc, max, sum)
and a reduce kernel merges them.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..kv_cache import cache_dims
from . import launch_cache

LOG2E = 1.4426950408889634


@triton.jit
def _find_seq(qsl_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest b with query_start_loc[b] // BLOCK_Q + b <= q_block."""
    lo = num_seqs * 0  # a tensor, so the loop-carried type is fixed
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_block = tl.load(qsl_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _attend_tile(acc, l_i, m_i, q, tile, k_ptr, v_ptr, bt_row_ptr, kv_head, seq_len, q_pos, sliding_window,
                 scale_log2, scale, softcap, d,
                 stride_k0, stride_k1, stride_k2, stride_k3, stride_v0, stride_v1, stride_v2, stride_v3,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, PAGE: tl.constexpr, TILE: tl.constexpr,
                 SHUFFLED: tl.constexpr, X: tl.constexpr, MASKED: tl.constexpr, USE_WINDOW: tl.constexpr,
                 USE_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    keys = tile * TILE + tl.arange(0, TILE)
    d_ok = d < HEAD_DIM
    if MASKED:
        key_ok = keys < seq_len
        page = tl.load(bt_row_ptr + keys // PAGE, mask=key_ok, other=0).to(tl.int64)
    else:
        key_ok = keys >= 0
        page = tl.load(bt_row_ptr + keys // PAGE).to(tl.int64)
    off = keys % PAGE
    if SHUFFLED and not MASKED and HEAD_DIM == HEAD_DIM_P:
        # k [blocks, Hkv, D//X, PAGE, X], v [blocks, Hkv, PAGE//X, D, X]: load each tile in its stored
        # order (X innermost: 16-byte vectors, cp.async-pipelined), then reorder in registers
        kx = tl.arange(0, X)
        kd = tl.arange(0, HEAD_DIM // X)
        k3 = (page[None, :, None] * stride_k0 + kv_head * stride_k1 + kd[:, None, None] * (PAGE * X)
              + off[None, :, None] * X + kx[None, None, :])  # [D//X, TILE, X]
        k = tl.reshape(tl.permute(tl.load(k_ptr + k3), (0, 2, 1)), (HEAD_DIM, TILE))  # [D, TILE]
        kg = tl.arange(0, TILE // X)
        key_g = tile * TILE + kg * X  # first key of each group of X keys (a group never spans pages)
        page_g = tl.load(bt_row_ptr + key_g // PAGE).to(tl.int64)
        v3 = (page_g[:, None, None] * stride_v0 + kv_head * stride_v1 + ((key_g % PAGE) // X)[:, None, None] * (HEAD_DIM * X)
              + d[None, :, None] * X + kx[None, None, :])  # [TILE//X, D, X]
        v = tl.reshape(tl.permute(tl.load(v_ptr + v3), (0, 2, 1)), (TILE, HEAD_DIM))  # [TILE, D]
    else:
        if SHUFFLED:
            k_offs = (page[None, :] * stride_k0 + kv_head * stride_k1 + (d // X)[:, None] * (PAGE * X)
                      + off[None, :] * X + (d % X)[:, None])
            v_offs = (page[:, None] * stride_v0 + kv_head * stride_v1 + (off // X)[:, None] * (HEAD_DIM * X)
                      + d[None, :] * X + (off % X)[:, None])
        else:
            # k, v [blocks, PAGE, Hkv, D]
            k_offs = page[None, :] * stride_k0 + off[None, :] * stride_k1 + kv_head * stride_k2 + d[:, None]
            v_offs = page[:, None] * stride_v0 + off[:, None] * stride_v1 + kv_head * stride_v2 + d[None, :]
        if MASKED or HEAD_DIM != HEAD_DIM_P:
            k = tl.load(k_ptr + k_offs, mask=d_ok[:, None] & key_ok[None, :], other=0.0)  # [D, TILE]
            v = tl.load(v_ptr + v_offs, mask=key_ok[:, None] & d_ok[None, :], other=0.0)  # [TILE, D]
        else:
            k = tl.load(k_ptr + k_offs)
            v = tl.load(v_ptr + v_offs)
    s = tl.dot(q, k.to(q.dtype), input_precision=DOT_PRECISION)  # [BLOCK_M, TILE] fp32
    if not (MASKED or USE_SOFTCAP):
        # hot path: scale folded into one FMA with the max subtraction; scores are finite here
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2)
        p = tl.math.exp2(s * scale_log2 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        return acc, l_i, m_new
    if USE_SOFTCAP:
        s = s * scale
        s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)  # softcap * tanh(s / softcap)
        s = s * 1.4426950408889634
    else:
        s = s * scale_log2
    if MASKED:
        diff = q_pos[:, None] - keys[None, :]
        visible = (diff >= 0) & key_ok[None, :]
        if USE_WINDOW:
            visible = visible & (diff < sliding_window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)  # a row with nothing visible yet stays at 0/0
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["num_seqs", "num_q_blocks", "sliding_window"])
def _unified_attention_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr, qsl_ptr, seq_lens_ptr, bt_ptr,
    part_acc_ptr, part_max_ptr, part_sum_ptr,
    num_seqs, num_q_blocks, scale, scale_log2, softcap, sliding_window,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    stride_k0, stride_k1, stride_k2, stride_k3, stride_v0, stride_v1, stride_v2, stride_v3,
    QPKV: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr, SHUFFLED: tl.constexpr, X: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, NUM_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Heaviest (last) q-blocks first: causal blocks late in a sequence do the most work.
    q_block = num_q_blocks - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    seq = _find_seq(qsl_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    q_first = (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q  # first query of this block, within the seq
    if q_first >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_idx = q_first + rows // QPKV
    head = kv_head * QPKV + rows % QPKV
    row_ok = (rows < BLOCK_Q * QPKV) & (q_idx < q_len)
    q_pos = context_len + q_idx
    d = tl.arange(0, HEAD_DIM_P)
    tok = (q_start + q_idx).to(tl.int64)
    q_offs = tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None] & (d < HEAD_DIM)[None, :], other=0.0)

    # Keys this block can see: [kv_start, kv_end); all rows see keys <= the first row's position.
    kv_end = tl.minimum(seq_len, context_len + q_first + BLOCK_Q)
    tile_lo = 0
    if USE_WINDOW:
        tile_lo = tl.maximum(context_len + q_first - sliding_window + 1, 0) // TILE
    tile_hi = tl.cdiv(kv_end, TILE)
    full_hi = (context_len + q_first + 1) // TILE
    if USE_WINDOW:
        full_hi = tile_lo  # the window's lower edge varies per row: mask every tile
    if NUM_SEGMENTS > 1:
        per_segment = tl.cdiv(tile_hi - tile_lo, NUM_SEGMENTS)
        tile_lo = tile_lo + segment * per_segment
        tile_hi = tl.minimum(tile_lo + per_segment, tile_hi)
    unmasked_hi = tl.minimum(tl.maximum(full_hi, tile_lo), tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    bt_row_ptr = bt_ptr + seq.to(tl.int64) * stride_bt
    for tile in range(tile_lo, unmasked_hi):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, tile, k_ptr, v_ptr, bt_row_ptr, kv_head, seq_len, q_pos, sliding_window,
            scale_log2, scale, softcap, d,
            stride_k0, stride_k1, stride_k2, stride_k3, stride_v0, stride_v1, stride_v2, stride_v3,
            HEAD_DIM, HEAD_DIM_P, PAGE, TILE, SHUFFLED, X, False, USE_WINDOW, USE_SOFTCAP, DOT_PRECISION)
    for tile in range(unmasked_hi, tile_hi):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, tile, k_ptr, v_ptr, bt_row_ptr, kv_head, seq_len, q_pos, sliding_window,
            scale_log2, scale, softcap, d,
            stride_k0, stride_k1, stride_k2, stride_k3, stride_v0, stride_v1, stride_v2, stride_v3,
            HEAD_DIM, HEAD_DIM_P, PAGE, TILE, SHUFFLED, X, True, USE_WINDOW, USE_SOFTCAP, DOT_PRECISION)

    if NUM_SEGMENTS > 1:
        # partials [T, Hq, NUM_SEGMENTS, (HEAD_DIM_P)], fp32, unnormalised
        row_part = (tok * (QPKV * tl.num_programs(1)) + head) * NUM_SEGMENTS + segment
        tl.store(part_max_ptr + row_part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + row_part, l_i, mask=row_ok)
        tl.store(part_acc_ptr + row_part[:, None] * HEAD_DIM_P + d[None, :], acc, mask=row_ok[:, None])
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_offs = tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (d < HEAD_DIM)[None, :])


@triton.jit
def _reduce_segments_kernel(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, num_heads, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, NUM_SEGMENTS: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    row = tok * num_heads + head
    segs = tl.arange(0, NUM_SEGMENTS)
    d = tl.arange(0, HEAD_DIM_P)
    seg_max = tl.load(part_max_ptr + row * NUM_SEGMENTS + segs)
    seg_sum = tl.load(part_sum_ptr + row * NUM_SEGMENTS + segs)
    seg_acc = tl.load(part_acc_ptr + (row * NUM_SEGMENTS + segs)[:, None] * HEAD_DIM_P + d[None, :])
    m = tl.max(seg_max, axis=0)
    m = tl.where(m > float("-inf"), m, 0.0)
    w = tl.math.exp2(seg_max - m)  # empty segments: exp2(-inf) = 0
    total = tl.sum(seg_sum * w, axis=0)
    out = tl.sum(seg_acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + tok * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def pick_config(num_seqs: int, num_kv_heads: int, qpkv: int, head_dim_p: int, max_query_len: int,
                max_seq_len: int, device: torch.device, split_kv: bool | None = None, elem_bytes: int = 2) -> dict:
    """Block sizes, warps and the split-KV segment count for one launch (host ints only)."""
    min_m = max(16, launch_cache.next_power_of_2(qpkv))
    if max_query_len <= 1:
        # decode (the shuffled layout's route; the standard one takes paged_decode): 32-key tiles, 2 stages,
        # split-KV segments below. H100, `tune_decode.py --unified-grid`: 0.91-0.92x SDPA at 64 x 4k, 256 x 2k
        # and 16 x 32k, where 64-key tiles, 3 stages and ~8 programs per SM ran 0.80-0.84x.
        block_m, tile, warps, stages = min_m, 32, 4, 2
    elif max_query_len * qpkv <= 64:
        block_m, tile, warps, stages = max(64, min_m), 64, 4, 3
    else:
        block_m, tile, warps, stages = max(128, min_m), 64, 8, 3
    if head_dim_p > 128 or elem_bytes > 2:  # keep the fp32 accumulator (and fp32 tiles) in registers
        block_m, tile = max(min(block_m, 64), min_m), 32
    segments = 1
    if max_query_len <= 1 and split_kv is not False:
        sms = _num_sms(device.index or 0) if device.type == "cuda" else 4
        programs = num_seqs * num_kv_heads
        # one segment once the batch alone puts ~3 programs on every SM (as paged_decode's rule): at 64 x 4k
        # (512 programs, 132 SMs) 1 segment ran 0.92x SDPA on an H100 and 0.82x on an H200, 2 segments
        # 0.91x / 0.79x (tune_decode.py --quick --unified-grid); fewer programs: split to ~4 per SM
        want = 1 if programs >= 3 * sms else launch_cache.next_power_of_2(-(-4 * sms // max(programs, 1)))
        max_by_len = max(1, launch_cache.next_power_of_2(-(-max_seq_len // tile)) // 2)  # >= 2 tiles a segment
        segments = min(16, want, max_by_len)
        if split_kv:
            segments = max(segments, 2)
    return dict(BLOCK_M=block_m, BLOCK_Q=block_m // qpkv, TILE=tile, num_warps=warps, num_stages=stages,
                NUM_SEGMENTS=segments)


def unified_attention_launch(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                             sliding_window, softcap, max_query_len, max_seq_len, split_kv: bool | None = None,
                             config: dict | None = None):
    """Launch the kernel (and the reduce in split-KV mode); returns out [T, Hq, D] in q's dtype.

    ``split_kv``: None = decide from the batch; True/False force it (tests). ``config``: override
    entries of pick_config's choice (BLOCK_M, TILE, num_warps, num_stages, NUM_SEGMENTS; benchmarks).

    A decode-only batch (one query per sequence) on the standard layout without a config override
    runs the paged decode kernel instead (triton_kernels/paged_decode.py: the same math, wide loads on both layouts, its
    own split-KV choice); pass a config to time this file's kernel on such a batch."""
    # Measured on an H100 (benchmarks/tune_decode.py): paged_decode wins on the standard layout
    # (0.98x SDPA vs 0.93-0.97x), this kernel on the shuffled one (0.90-0.92x vs 0.65x).
    if config is None and layout == "standard" and max_query_len <= 1 and q.shape[0] == seq_lens.shape[0]:
        from .paged_decode import choose_num_splits, paged_decode_launch

        splits = None if split_kv is None else 1
        if split_kv:
            _, _, hkv, _ = cache_dims(k_cache, v_cache, layout)
            splits = max(2, choose_num_splits(q.shape[0], hkv, max(int(max_seq_len), 1), q.device))
        return paged_decode_launch(q, k_cache, v_cache, seq_lens, block_table, scale, layout,
                                   int(sliding_window or 0), float(softcap or 0.0), num_splits=splits)
    num_tokens, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = cache_dims(k_cache, v_cache, layout)
    qpkv = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    if q.stride(2) != 1:
        q = q.contiguous()
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    head_dim_p = max(16, launch_cache.next_power_of_2(head_dim))
    cfg = pick_config(num_seqs, num_kv_heads, qpkv, head_dim_p, max_query_len, max_seq_len, q.device, split_kv,
                      q.element_size())
    if config:
        cfg.update(config)
        cfg["BLOCK_Q"] = cfg["BLOCK_M"] // qpkv
    num_q_blocks = num_tokens // cfg["BLOCK_Q"] + num_seqs
    segments = cfg["NUM_SEGMENTS"]
    if segments > 1:
        part_acc = torch.empty((num_tokens, num_heads, segments, head_dim_p), dtype=torch.float32, device=q.device)
        part_max = torch.empty((num_tokens, num_heads, segments), dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # unused
    x = k_cache.shape[-1] if layout == "shuffled" else 1
    sk, sv = k_cache.stride(), v_cache.stride()
    _unified_attention_kernel[(num_q_blocks, num_kv_heads, segments)](
        out, q, k_cache, v_cache, query_start_loc, seq_lens, block_table,
        part_acc, part_max, part_sum,
        num_seqs, num_q_blocks, float(scale), float(scale) * LOG2E, float(softcap), int(sliding_window),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        sk[0], sk[1], sk[2], sk[3], sv[0], sv[1], sv[2], sv[3],
        QPKV=qpkv, HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p, PAGE=page,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_Q=cfg["BLOCK_Q"], TILE=cfg["TILE"], SHUFFLED=layout == "shuffled", X=x,
        USE_WINDOW=sliding_window > 0, USE_SOFTCAP=softcap > 0, NUM_SEGMENTS=segments,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if segments > 1:
        _reduce_segments_kernel[(num_tokens, num_heads)](
            out, part_acc, part_max, part_sum, num_heads, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p, NUM_SEGMENTS=segments, num_warps=4,
        )
    return out
