"""Cache ops: write new tokens into the paged cache, read a sequence's tokens back out.

    reshape_and_cache(k [T,Hkv,D], v, k_cache, v_cache, slot_mapping [T], layout)
        k_cache/v_cache[slot] = k/v[t] cast to the cache dtype; slot < 0: token skipped.
    gather_cache(k_cache, v_cache, block_table [B,max_blocks], cu_seq_lens [B+1], seq_starts [B],
                 k_out [W,Hkv,D], v_out, layout)
        rows cu_seq_lens[b] .. cu_seq_lens[b+1] of k_out/v_out = the sequence's tokens
        seq_starts[b] .. seq_starts[b] + n_b (a contiguous chunk of its context).

Both ops mutate their outputs and return nothing. Layouts: see kv_cache.py.
"""

from __future__ import annotations

import torch

from .common import check_float, check_gather_index, check_index, check_rank, check_same_device
from .custom_op import custom_op
from .kv_cache import KVCache, cache_dims, check_block_table_values, check_cache_tensors, check_slot_values
from .registry import dispatch, register_provider


def _check_tokens(op: str, name: str, t: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    check_float(name, op, t)
    check_rank(name, op, t, 3, "[T, Hkv, D]")
    if t.shape[1:] != (num_kv_heads, head_dim):
        raise ValueError(f"rocm_attn.{op}: {name} has shape {tuple(t.shape)}; the cache holds "
                         f"[*, {num_kv_heads}, {head_dim}] (Hkv, D)")


def check_reshape_and_cache(k, v, k_cache, v_cache, slot_mapping, layout) -> None:
    op = "reshape_and_cache"
    check_cache_tensors(op, k_cache, v_cache, layout)
    _, _, hkv, d = cache_dims(k_cache, v_cache, layout)
    _check_tokens(op, "k", k, hkv, d)
    _check_tokens(op, "v", v, hkv, d)
    if v.shape != k.shape:
        raise ValueError(f"rocm_attn.{op}: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    check_index(op, "slot_mapping", slot_mapping, 1, "[T]")
    if slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"rocm_attn.{op}: slot_mapping has {slot_mapping.shape[0]} entries for {k.shape[0]} tokens")
    check_same_device(op, k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)


def check_gather_cache(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout) -> None:
    op = "gather_cache"
    check_cache_tensors(op, k_cache, v_cache, layout)
    _, _, hkv, d = cache_dims(k_cache, v_cache, layout)
    _check_tokens(op, "k_out", k_out, hkv, d)
    _check_tokens(op, "v_out", v_out, hkv, d)
    if v_out.shape != k_out.shape:
        raise ValueError(f"rocm_attn.{op}: k_out {tuple(k_out.shape)} and v_out {tuple(v_out.shape)} differ")
    check_gather_index(op, block_table, cu_seq_lens, seq_starts)
    check_same_device(op, k_cache=k_cache, block_table=block_table, cu_seq_lens=cu_seq_lens,
                      seq_starts=seq_starts, k_out=k_out, v_out=v_out)


# ---------------------------------------------------------------- torch reference providers

def _slot_views(k_cache, v_cache, layout, blk, off):
    """(k rows, v rows) [n, Hkv, D] of cache slots (blk, off), as copies."""
    if layout == "standard":
        return k_cache[blk, off], v_cache[blk, off]
    x = k_cache.shape[-1]
    k = k_cache[blk, :, :, off, :]  # [n, Hkv, D//x, x]
    v = v_cache[blk, :, off // x, :, off % x]  # [n, Hkv, D]
    return k.reshape(k.shape[0], k.shape[1], -1), v


@register_provider("reshape_and_cache", "torch")
def reshape_and_cache_torch(k, v, k_cache, v_cache, slot_mapping, layout) -> None:
    bs = k_cache.shape[1] if layout == "standard" else k_cache.shape[3]
    keep = slot_mapping >= 0
    slots = check_slot_values("reshape_and_cache", slot_mapping, k_cache.shape[0] * bs)
    if slots.numel() == 0:  # every token skipped (the shuffled reshape below cannot take 0 rows)
        return
    blk, off = slots // bs, slots % bs
    k_new, v_new = k[keep].to(k_cache.dtype), v[keep].to(v_cache.dtype)
    if layout == "standard":
        k_cache[blk, off] = k_new
        v_cache[blk, off] = v_new
    else:
        x = k_cache.shape[-1]
        k_cache[blk, :, :, off, :] = k_new.reshape(k_new.shape[0], k_new.shape[1], -1, x)
        v_cache[blk, :, off // x, :, off % x] = v_new


@register_provider("gather_cache", "torch")
def gather_cache_torch(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout) -> None:
    bs = k_cache.shape[1] if layout == "standard" else k_cache.shape[3]
    cu = cu_seq_lens.long()
    lens = cu[1:] - cu[:-1]
    total = int(cu[-1])
    if total == 0:
        return
    if int(cu[0]) < 0 or int(lens.min()) < 0 or total > k_out.shape[0]:
        raise ValueError(f"rocm_attn.gather_cache: cu_seq_lens must rise from >= 0 to at most k_out's "
                         f"{k_out.shape[0]} rows, got {cu.tolist()}")
    check_block_table_values("gather_cache", block_table, seq_starts.long() + lens, k_cache.shape[0], bs)
    seq_of_row = torch.repeat_interleave(torch.arange(len(lens), device=cu.device), lens)
    rows = torch.arange(total, device=cu.device) + cu[0]
    pos = seq_starts.long()[seq_of_row] + (rows - cu[seq_of_row])
    blk = block_table.long()[seq_of_row, pos // bs]
    k_rows, v_rows = _slot_views(k_cache, v_cache, layout, blk, pos % bs)
    k_out[rows] = k_rows.to(k_out.dtype)
    v_out[rows] = v_rows.to(v_out.dtype)


@register_provider("reshape_and_cache", "triton")
def reshape_and_cache_triton(k, v, k_cache, v_cache, slot_mapping, layout) -> None:
    from .triton_kernels.reshape_and_cache import reshape_and_cache_launch

    reshape_and_cache_launch(k, v, k_cache, v_cache, slot_mapping, layout)


@register_provider("gather_cache", "triton")
def gather_cache_triton(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout) -> None:
    from .triton_kernels.gather_cache import gather_cache_launch

    gather_cache_launch(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout)


# ---------------------------------------------------------------- custom ops

@custom_op("reshape_and_cache", mutates_args=("k_cache", "v_cache"))
def reshape_and_cache_op(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         slot_mapping: torch.Tensor, layout: str) -> None:
    """Write k/v [T, Hkv, D] into the paged cache at slot_mapping (negative slots skipped)."""
    check_reshape_and_cache(k, v, k_cache, v_cache, slot_mapping, layout)
    if k.shape[0] == 0:
        return
    dispatch("reshape_and_cache", k.device, k, v, k_cache, v_cache, slot_mapping, layout)


@reshape_and_cache_op.register_fake
def _(k, v, k_cache, v_cache, slot_mapping, layout) -> None:
    check_reshape_and_cache(k, v, k_cache, v_cache, slot_mapping, layout)


@custom_op("gather_cache", mutates_args=("k_out", "v_out"))
def gather_cache_op(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    cu_seq_lens: torch.Tensor, seq_starts: torch.Tensor, k_out: torch.Tensor,
                    v_out: torch.Tensor, layout: str) -> None:
    """Copy each sequence's cached tokens seq_starts[b] .. (+ its row count) into k_out/v_out rows
    cu_seq_lens[b] .. cu_seq_lens[b+1]."""
    check_gather_cache(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout)
    if block_table.shape[0] == 0 or k_out.shape[0] == 0:
        return
    dispatch("gather_cache", k_out.device, k_cache, v_cache, block_table, cu_seq_lens, seq_starts,
             k_out, v_out, layout)


@gather_cache_op.register_fake
def _(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout) -> None:
    check_gather_cache(k_cache, v_cache, block_table, cu_seq_lens, seq_starts, k_out, v_out, layout)


def reshape_and_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, slot_mapping: torch.Tensor) -> None:
    """Write new tokens k/v [T, Hkv, D] into ``kv_cache`` at ``slot_mapping`` (negative = skip)."""
    if not isinstance(kv_cache, KVCache):
        raise TypeError(f"rocm_attn.reshape_and_cache: kv_cache must be a rocm_attn.KVCache, "
                        f"got {type(kv_cache).__name__}")
    torch.ops.rocm_attn.reshape_and_cache(k, v, kv_cache.k_cache, kv_cache.v_cache, slot_mapping, kv_cache.layout)


def gather_cache(kv_cache: KVCache, block_table, cu_seq_lens, seq_starts, k_out, v_out) -> None:
    """gather_cache on a KVCache (see the op)."""
    torch.ops.rocm_attn.gather_cache(kv_cache.k_cache, kv_cache.v_cache, block_table, cu_seq_lens, seq_starts,
                                     k_out, v_out, kv_cache.layout)
