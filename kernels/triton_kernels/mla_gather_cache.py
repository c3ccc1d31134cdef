"""Triton kernel for mla_gather_cache: one program per (output row, sequence) copies one latent row.

The grid covers the output rows; each program finds its sequence by a binary search of cu_seq_lens."""

from __future__ import annotations

import triton
import triton.language as tl

from . import launch_cache


@triton.jit
def _mla_gather_cache_kernel(
    CACHE, BLOCK_TABLE, CU, STARTS, OUT,
    num_seqs, stride_cblk, stride_ctok, stride_bt, stride_out,
    WIDTH: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0)
    first = tl.load(CU)
    total = tl.load(CU + num_seqs) - first
    if row < total:
        r = row + first
        # largest b with cu[b] <= r
        lo = tl.full([], 0, tl.int32)
        hi = tl.full([], 0, tl.int32) + num_seqs
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if tl.load(CU + mid) <= r:
                lo = mid
            else:
                hi = mid
        pos = tl.load(STARTS + lo) + (r - tl.load(CU + lo))
        blk = tl.load(BLOCK_TABLE + lo.to(tl.int64) * stride_bt + pos // BLOCK_SIZE).to(tl.int64)
        src = CACHE + blk * stride_cblk + (pos % BLOCK_SIZE) * stride_ctok
        offs = tl.arange(0, BLOCK_W)
        x = tl.load(src + offs, mask=offs < WIDTH)
        tl.store(OUT + r.to(tl.int64) * stride_out + offs, x.to(OUT.dtype.element_ty), mask=offs < WIDTH)


def mla_gather_cache_launch(latent_cache, block_table, cu_seq_lens, seq_starts, out) -> None:
    rows = out.shape[0]
    if rows == 0 or block_table.shape[0] == 0:
        return
    width = latent_cache.shape[2]
    _mla_gather_cache_kernel[(rows,)](
        latent_cache, block_table, cu_seq_lens, seq_starts, out,
        block_table.shape[0], latent_cache.stride(0), latent_cache.stride(1), block_table.stride(0), out.stride(0),
        WIDTH=width, BLOCK_SIZE=latent_cache.shape[1], BLOCK_W=launch_cache.next_power_of_2(width), num_warps=4,
    )
