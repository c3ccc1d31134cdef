"""Triton reshape_and_cache: one program per new token writes its [Hkv, D] keys and values into the
paged cache (standard or shuffled layout), cast to the cache dtype; negative slots are skipped."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch_cache


@triton.jit
def _reshape_and_cache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kc0, stride_kc1, stride_kc2, stride_kc3, stride_vc0, stride_vc1, stride_vc2, stride_vc3,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr, SHUFFLED: tl.constexpr, X: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE
    off = slot % PAGE
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)
    k = tl.load(k_ptr + tok * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + tok * stride_vt + h * stride_vh + d, mask=mask)
    if SHUFFLED:
        # k [blocks, Hkv, D//X, PAGE, X]; v [blocks, Hkv, PAGE//X, D, X]
        k_dst = page * stride_kc0 + h * stride_kc1 + (d // X) * stride_kc2 + off * stride_kc3 + d % X
        v_dst = page * stride_vc0 + h * stride_vc1 + (off // X) * stride_vc2 + d * stride_vc3 + off % X
    else:
        # k, v [blocks, PAGE, Hkv, D]
        k_dst = page * stride_kc0 + off * stride_kc1 + h * stride_kc2 + d
        v_dst = page * stride_vc0 + off * stride_vc1 + h * stride_vc2 + d
    tl.store(k_cache_ptr + k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache_launch(k, v, k_cache, v_cache, slot_mapping, layout) -> None:
    num_tokens, num_kv_heads, head_dim = k.shape
    if k.stride(2) != 1:
        k = k.contiguous()
    if v.stride(2) != 1:
        v = v.contiguous()
    shuffled = layout == "shuffled"
    page = k_cache.shape[3] if shuffled else k_cache.shape[1]
    block_h, block_d = launch_cache.next_power_of_2(num_kv_heads), launch_cache.next_power_of_2(head_dim)
    skc, svc = k_cache.stride(), v_cache.stride()
    _reshape_and_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        skc[0], skc[1], skc[2], skc[3], svc[0], svc[1], svc[2], svc[3],
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        PAGE=page, SHUFFLED=shuffled, X=k_cache.shape[-1] if shuffled else 1,
        num_warps=4 if block_h * block_d >= 1024 else 1,
    )
