"""paged_decode: one query token per sequence against its paged KV cache (the decode step).

    out [B, Hq, D] = paged_decode(q [B, Hq, D], k_cache, v_cache, seq_lens [B], block_table [B, max_blocks],
                                  scale, layout, sliding_window=0, softcap=0.0)

The query of sequence b sits at position seq_lens[b] - 1 (its own key already in the cache) and
sees keys j <= that position (and, with sliding_window=W, position - j < W). softcap=c:
scores = c * tanh(scores / c) after scaling. seq_lens[b] == 0 -> out 0. Layouts: see kv_cache.py.

Providers: torch (reference), triton (GQA heads of one KV head share a program so each KV byte is
read once; split-KV + a reduce when B * Hkv cannot fill the GPU), aiter (ROCm ``pa_fwd_asm`` on the
shuffled layout where its limits allow: D 128, block 16, scale 1/sqrt(D), no window / softcap).
"""

from __future__ import annotations

import logging
import math

import torch

from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .flash_attention import attend_fp32
from .kv_cache import cache_dims, check_block_table_values, check_cache_tensors
from .registry import dispatch, register_provider, set_auto_order

log = logging.getLogger("rocm_attn")


def check_paged_decode_inputs(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window, softcap):
    op = "paged_decode"
    check_cache_tensors(op, k_cache, v_cache, layout)
    check_float("q", op, q)
    check_rank("q", op, q, 3, "[B, Hq, D]")
    if q.dtype != k_cache.dtype:
        raise TypeError(f"rocm_attn.{op}: q is {q.dtype} but the cache is {k_cache.dtype}")
    _, _, hkv, d = cache_dims(k_cache, v_cache, layout)
    if q.shape[2] != d:
        raise ValueError(f"rocm_attn.{op}: q head dim {q.shape[2]} differs from the cache's {d}")
    if q.shape[1] % hkv:
        raise ValueError(f"rocm_attn.{op}: query heads ({q.shape[1]}) must be a multiple of KV heads ({hkv})")
    for name, t, rank, doc in (("seq_lens", seq_lens, 1, "[B]"), ("block_table", block_table, 2, "[B, max_blocks]")):
        if t.dtype != torch.int32:
            raise TypeError(f"rocm_attn.{op}: {name} must be int32, got {t.dtype}")
        check_rank(name, op, t, rank, doc)
        if t.shape[0] != q.shape[0]:
            raise ValueError(f"rocm_attn.{op}: {name} has {t.shape[0]} rows for {q.shape[0]} sequences")
    check_same_device(op, q=q, k_cache=k_cache, seq_lens=seq_lens, block_table=block_table)
    if not math.isfinite(scale):
        raise ValueError(f"rocm_attn.{op}: scale must be finite, got {scale}")
    if sliding_window < 0:
        raise ValueError(f"rocm_attn.{op}: sliding_window must be >= 0 (0 = none), got {sliding_window}")
    if softcap < 0 or not math.isfinite(softcap):
        raise ValueError(f"rocm_attn.{op}: softcap must be >= 0 (0 = none), got {softcap}")


def gather_sequence(k_cache, v_cache, layout, blocks: torch.Tensor, length: int):
    """Tokens 0..length-1 of one sequence as (k [L, Hkv, D], v [L, Hkv, D]), by index arithmetic."""
    _, bs, hkv, d = cache_dims(k_cache, v_cache, layout)
    pos = torch.arange(length, device=k_cache.device)
    blk, off = blocks.long()[pos // bs], pos % bs
    if layout == "standard":
        return k_cache[blk, off], v_cache[blk, off]
    x = k_cache.shape[-1]
    k = k_cache[blk, :, :, off, :].reshape(length, hkv, d)  # [L, Hkv, D//x, x] -> [L, Hkv, D]
    v = v_cache[blk, :, off // x, :, off % x]  # [L, Hkv, D]
    return k, v


@register_provider("paged_decode", "torch")
def paged_decode_torch(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0):
    nb, bs, _, _ = cache_dims(k_cache, v_cache, layout)
    check_block_table_values("paged_decode", block_table, seq_lens, nb, bs)
    out = q.new_zeros(q.shape)
    for b, length in enumerate(seq_lens.tolist()):
        if length <= 0:
            continue
        k, v = gather_sequence(k_cache, v_cache, layout, block_table[b], length)
        o, _ = attend_fp32(q[b].unsqueeze(1), k.transpose(0, 1), v.transpose(0, 1), scale, True,
                           sliding_window, softcap, length - 1)
        out[b] = o.squeeze(1).to(q.dtype)
    return out


@register_provider("paged_decode", "triton", bf16_dot=True)
def paged_decode_triton(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0):
    if layout == "shuffled" and q.device.type == "cuda":
        # On the shuffled layout the unified kernel's decode path measured faster on an H100
        # (0.80-0.84x SDPA vs 0.65x, benchmarks/tune_decode.py): run it on this decode batch.
        # max_seq_len is bounded by the block table (no host sync, CUDA-graph safe).
        from .triton_kernels.unified_attention import unified_attention_launch

        B = q.shape[0]
        query_start_loc = torch.arange(B + 1, dtype=torch.int32, device=q.device)
        _, block_size, _, _ = cache_dims(k_cache, v_cache, layout)
        return unified_attention_launch(q, k_cache, v_cache, query_start_loc, seq_lens, block_table, scale, layout,
                                        sliding_window, softcap, 1, block_table.shape[1] * block_size)
    from .triton_kernels.paged_decode import paged_decode_launch

    return paged_decode_launch(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window, softcap)


def _aiter_supports(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0):
    import aiter

    if not hasattr(aiter, "pa_fwd_asm"):
        return "this aiter has no pa_fwd_asm"
    _, bs, _, d = cache_dims(k_cache, v_cache, layout)
    if layout != "shuffled" or d != 128 or bs != 16 or q.dtype not in (torch.float16, torch.bfloat16):
        return "pa_fwd_asm takes the shuffled layout, head 128, block 16, fp16/bf16 only"
    if abs(scale * math.sqrt(d) - 1.0) > 1e-6:
        return "pa_fwd_asm has the softmax scale fixed at 1/sqrt(D)"
    if sliding_window or softcap:
        return "pa_fwd_asm has no sliding window / soft-cap"
    return None


@register_provider("paged_decode", "aiter", supports=_aiter_supports)
def paged_decode_aiter(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0):
    import aiter

    try:
        out = aiter.pa_fwd_asm(q.contiguous(), k_cache, v_cache, block_table, seq_lens, block_table.shape[1])
    except TypeError as exc:  # the binding's signature moved between AITER versions: use ours
        log.warning("rocm_attn.paged_decode: aiter.pa_fwd_asm call failed (%s); using the Triton kernel", exc)
        return paged_decode_triton(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window,
                                   softcap)
    return out.reshape(q.shape).to(q.dtype).contiguous()


def _auto_order(q, *args, **kwargs):
    return ["aiter", "triton", "torch"] if q.device.type == "cuda" else ["torch"]


set_auto_order("paged_decode", _auto_order)


@custom_op("paged_decode", mutates_args=())
def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                 block_table: torch.Tensor, scale: float, layout: str, sliding_window: int = 0,
                 softcap: float = 0.0) -> torch.Tensor:
    """One query per sequence over its paged cache -> out [B, Hq, D]. See the module doc."""
    check_paged_decode_inputs(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window, softcap)
    if q.shape[0] == 0:
        return q.new_empty(q.shape)
    return dispatch("paged_decode", q.device, q, k_cache, v_cache, seq_lens, block_table, scale, layout,
                    sliding_window, softcap)


@paged_decode.register_fake
def _(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window=0, softcap=0.0):
    check_paged_decode_inputs(q, k_cache, v_cache, seq_lens, block_table, scale, layout, sliding_window, softcap)
    return q.new_empty(q.shape)
