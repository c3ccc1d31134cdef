"""Triton gather_cache: one program per output row. The row finds its sequence by binary search over
cu_seq_lens, then copies that token's [Hkv, D] keys and values out of the paged cache."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch_cache


@triton.jit(do_not_specialize=["num_seqs"])
def _gather_cache_kernel(
    k_cache_ptr, v_cache_ptr, bt_ptr, cu_ptr, starts_ptr, k_out_ptr, v_out_ptr, num_seqs,
    stride_bt, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kc0, stride_kc1, stride_kc2, stride_kc3, stride_vc0, stride_vc1, stride_vc2, stride_vc3,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr, SHUFFLED: tl.constexpr, X: tl.constexpr,
):
    row = tl.program_id(0)
    if row < tl.load(cu_ptr):
        return
    if row >= tl.load(cu_ptr + num_seqs):
        return
    # largest b in [0, num_seqs) with cu_seq_lens[b] <= row (skips empty sequences)
    lo = num_seqs * 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(cu_ptr + mid) <= row:
            lo = mid
        else:
            hi = mid - 1
    pos = tl.load(starts_ptr + lo) + (row - tl.load(cu_ptr + lo))
    page = tl.load(bt_ptr + lo.to(tl.int64) * stride_bt + pos // PAGE).to(tl.int64)
    off = pos % PAGE
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)
    if SHUFFLED:
        k_src = page * stride_kc0 + h * stride_kc1 + (d // X) * stride_kc2 + off * stride_kc3 + d % X
        v_src = page * stride_vc0 + h * stride_vc1 + (off // X) * stride_vc2 + d * stride_vc3 + off % X
    else:
        k_src = page * stride_kc0 + off * stride_kc1 + h * stride_kc2 + d
        v_src = page * stride_vc0 + off * stride_vc1 + h * stride_vc2 + d
    k = tl.load(k_cache_ptr + k_src, mask=mask)
    v = tl.load(v_cache_ptr + v_src, mask=mask)
    row64 = row.to(tl.int64)
    tl.store(k_out_ptr + row64 * stride_kt + h * stride_kh + d, k.to(k_out_ptr.dtype.element_ty), mask=mask)
    tl.store(v_out_ptr + row64 * stride_vt + h * stride_vh + d, v.to(v_out_ptr.dtype.element_ty), mask=mask)


def gather_cache_launch(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout) -> None:
    if k_out.stride(2) != 1 or v_out.stride(2) != 1:
        raise ValueError("rocm_attn.gather_cache: k_out and v_out need a contiguous last dimension")
    num_rows, num_kv_heads, head_dim = k_out.shape
    shuffled = layout == "shuffled"
    page = k_cache.shape[3] if shuffled else k_cache.shape[1]
    block_h, block_d = launch_cache.next_power_of_2(num_kv_heads), launch_cache.next_power_of_2(head_dim)
    skc, svc = k_cache.stride(), v_cache.stride()
    _gather_cache_kernel[(num_rows,)](
        k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, block_table.shape[0],
        block_table.stride(0), k_out.stride(0), k_out.stride(1), v_out.stride(0), v_out.stride(1),
        skc[0], skc[1], skc[2], skc[3], svc[0], svc[1], svc[2], svc[3],
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        PAGE=page, SHUFFLED=shuffled, X=k_cache.shape[-1] if shuffled else 1,
        num_warps=4 if block_h * block_d >= 1024 else 1,
    )
