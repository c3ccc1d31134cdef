"""Triton kernel for mla_reshape_and_cache: one program per token writes [kv_c, k_pe] to its cache slot."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch_cache


@triton.jit
def _mla_reshape_and_cache_kernel(
    KV_C, K_PE, CACHE, SLOTS,
    stride_kv, stride_pe, stride_cblk, stride_ctok,
    L: tl.constexpr, R: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(SLOTS + t).to(tl.int64)
    if slot >= 0:  # negative slot: padding token, not written
        row = CACHE + (slot // BLOCK_SIZE) * stride_cblk + (slot % BLOCK_SIZE) * stride_ctok
        offs_l = tl.arange(0, BLOCK_L)
        offs_r = tl.arange(0, BLOCK_R)
        kv = tl.load(KV_C + t * stride_kv + offs_l, mask=offs_l < L)
        pe = tl.load(K_PE + t * stride_pe + offs_r, mask=offs_r < R)
        tl.store(row + offs_l, kv.to(CACHE.dtype.element_ty), mask=offs_l < L)
        tl.store(row + L + offs_r, pe.to(CACHE.dtype.element_ty), mask=offs_r < R)


def mla_reshape_and_cache_launch(kv_c, k_pe, latent_cache, slot_mapping) -> None:
    kv_c = kv_c if kv_c.stride(-1) == 1 else kv_c.contiguous()
    k_pe = k_pe if k_pe.stride(-1) == 1 else k_pe.contiguous()
    T, L = kv_c.shape
    R = k_pe.shape[1]
    _mla_reshape_and_cache_kernel[(T,)](
        kv_c, k_pe, latent_cache, slot_mapping,
        kv_c.stride(0), k_pe.stride(0), latent_cache.stride(0), latent_cache.stride(1),
        L=L, R=R, BLOCK_SIZE=latent_cache.shape[1],
        BLOCK_L=launch_cache.next_power_of_2(L), BLOCK_R=launch_cache.next_power_of_2(R), num_warps=4,
    )
