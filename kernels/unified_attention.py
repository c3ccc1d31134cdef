"""unified_attention: one kernel for a whole mixed batch (decode, extend, prefill) over the paged cache.

    out [T, Hq, D] = unified_attention(q [T, Hq, D], k_cache, v_cache, query_start_loc [B+1],
                                       seq_lens [B], block_table [B, max_blocks], scale, layout,
                                       sliding_window (0 = none), softcap (0 = none),
                                       max_query_len, max_seq_len)

The new tokens' k/v must already be in the cache (reshape_and_cache). Query token r of sequence
b sits at position context_len + r (context_len = seq_lens[b] - query_len) and sees keys
j <= its position (and position - j < sliding_window when set). Scores are q.k * scale, then
softcap * tanh(scores / softcap) when softcap > 0. max_query_len / max_seq_len are host ints
(upper bounds are fine) so the launcher never reads the device.
"""

from __future__ import annotations

import torch

from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .kv_cache import cache_block_size, cache_dims, check_block_table_values, check_cache_tensors, to_standard
from .registry import dispatch, register_provider


def check_unified_inputs(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                         sliding_window, softcap, max_query_len, max_seq_len) -> None:
    op = "unified_attention"
    check_cache_tensors(op, k_cache, v_cache, layout)
    _, _, hkv, d = cache_dims(k_cache, v_cache, layout)
    check_float("q", op, q)
    check_rank("q", op, q, 3, "[T, Hq, D]")
    if q.shape[2] != d:
        raise ValueError(f"rocm_attn.{op}: q has head_dim {q.shape[2]} but the cache holds {d}")
    if q.shape[1] % hkv:
        raise ValueError(f"rocm_attn.{op}: q has {q.shape[1]} heads, not a multiple of the cache's {hkv} KV heads")
    for name, t, rank, doc in (("query_start_loc", query_start_loc, 1, "[B+1]"), ("seq_lens", seq_lens, 1, "[B]"),
                               ("block_table", block_table, 2, "[B, max_blocks]")):
        if t.dtype != torch.int32:
            raise TypeError(f"rocm_attn.{op}: {name} must be int32, got {t.dtype}")
        check_rank(name, op, t, rank, doc)
    b = seq_lens.shape[0]
    if query_start_loc.shape[0] != b + 1 or block_table.shape[0] != b:
        raise ValueError(f"rocm_attn.{op}: seq_lens has {b} entries, so query_start_loc needs {b + 1} and "
                         f"block_table {b} rows; got {query_start_loc.shape[0]} and {block_table.shape[0]}")
    if sliding_window < 0 or softcap < 0:
        raise ValueError(f"rocm_attn.{op}: sliding_window and softcap must be >= 0 (0 = off), "
                         f"got {sliding_window}, {softcap}")
    check_same_device(op, q=q, k_cache=k_cache, query_start_loc=query_start_loc, seq_lens=seq_lens,
                      block_table=block_table)


def dense_kv(k_std: torch.Tensor, v_std: torch.Tensor, blocks: torch.Tensor, seq_len: int):
    """A sequence's K, V [seq_len, Hkv, D] from standard-layout caches and its block ids."""
    nb = -(-seq_len // k_std.shape[1])
    idx = blocks[:nb].long()
    k = k_std[idx].reshape(-1, *k_std.shape[2:])[:seq_len]
    v = v_std[idx].reshape(-1, *v_std.shape[2:])[:seq_len]
    return k, v


@register_provider("unified_attention", "torch")
def unified_attention_torch(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                            sliding_window, softcap, max_query_len, max_seq_len):
    """Reference: dense fp32 attention, one sequence (and one chunk of 1024 queries) at a time."""
    k_std, v_std = to_standard(k_cache, v_cache, layout)
    out = q.new_zeros(q.shape)
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    if qsl[0] != 0 or qsl[-1] != q.shape[0] or any(b < a for a, b in zip(qsl, qsl[1:])):
        raise ValueError(f"rocm_attn.unified_attention: query_start_loc must rise from 0 to T = {q.shape[0]}, "
                         f"got {qsl}")
    for b, seq_len in enumerate(lens):
        if seq_len < qsl[b + 1] - qsl[b]:
            raise ValueError(f"rocm_attn.unified_attention: sequence {b}: seq_lens[{b}] = {seq_len} is shorter "
                             f"than its {qsl[b + 1] - qsl[b]} query tokens (seq_len = context + new tokens)")
    check_block_table_values("unified_attention", block_table, seq_lens, k_std.shape[0], k_std.shape[1])
    group = q.shape[1] // k_std.shape[2]
    for b, seq_len in enumerate(lens):
        start, end = qsl[b], qsl[b + 1]
        if end == start:
            continue
        context = seq_len - (end - start)
        k, v = dense_kv(k_std, v_std, block_table[b], seq_len)
        k = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, D]
        v = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        key_pos = torch.arange(seq_len, device=q.device)
        for c0 in range(start, end, 1024):
            c1 = min(c0 + 1024, end)
            qc = q[c0:c1].float().transpose(0, 1)  # [Hq, n, D]
            s = torch.matmul(qc, k.transpose(1, 2)) * scale
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            q_pos = context + torch.arange(c0 - start, c1 - start, device=q.device)
            diff = q_pos[:, None] - key_pos[None, :]
            visible = diff >= 0
            if sliding_window > 0:
                visible &= diff < sliding_window
            s = s.masked_fill(~visible, float("-inf"))
            out[c0:c1] = torch.matmul(torch.softmax(s, dim=-1), v).transpose(0, 1).to(q.dtype)
    return out


@register_provider("unified_attention", "triton", bf16_dot=True)
def unified_attention_triton(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                             sliding_window, softcap, max_query_len, max_seq_len):
    from .triton_kernels.unified_attention import unified_attention_launch

    return unified_attention_launch(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                                    sliding_window, softcap, max_query_len, max_seq_len)


@custom_op("unified_attention", mutates_args=())
def unified_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
                      seq_lens: torch.Tensor, block_table: torch.Tensor, scale: float, layout: str,
                      sliding_window: int, softcap: float, max_query_len: int, max_seq_len: int) -> torch.Tensor:
    """Causal GQA attention of a packed mixed batch over the paged cache -> [T, Hq, D] (q's dtype)."""
    check_unified_inputs(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                         sliding_window, softcap, max_query_len, max_seq_len)
    if q.shape[0] == 0 or seq_lens.shape[0] == 0:
        return q.new_zeros(q.shape)
    return dispatch("unified_attention", q.device, q, k_cache, v_cache, query_start_loc, seq_lens, block_table,
                    scale, layout, sliding_window, softcap, max_query_len, max_seq_len)


@unified_attention.register_fake
def _(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout, sliding_window, softcap,
      max_query_len, max_seq_len):
    check_unified_inputs(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                         sliding_window, softcap, max_query_len, max_seq_len)
    return q.new_empty(q.shape)


__all__ = ["unified_attention", "cache_block_size", "dense_kv"]
