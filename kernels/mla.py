"""MLA (DeepSeek-style Multi-head Latent Attention): the latent cache and its ops.

The cache holds one latent row per token, shared by every head:

    latent_cache [num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]   (512 + 64 in DeepSeek-V3)
    row = [kv_c (RMS-normed compressed KV), k_pe (the rotated rope key)]

Slots, block tables and the allocator are the MHA cache's (kv_cache.BlockAllocator, attention_metadata).

Ops (custom ops with fake impls; providers torch / triton / aiter):

    mla_reshape_and_cache(kv_c [T,L], k_pe [T,R], latent_cache, slot_mapping [T])   negative slot = skip
    mla_gather_cache(latent_cache, block_table [B,M], cu_seq_lens [B+1], seq_starts [B], out [W,L+R])
        rows cu_seq_lens[b] .. cu_seq_lens[b+1] of out = tokens seq_starts[b] .. of sequence b
    mla_decode(q [B,H,L+R], latent_cache, seq_lens [B], block_table [B,M], scale, kv_lora_rank)
        -> (out [B,H,L], lse [H,B] fp32)
        The absorbed decode: q = [q_nope @ W_UK (per head, into latent space), q_pe]. Every head
        attends (MQA) over the sequence's latent rows: keys = the full rows, values = their first L
        columns. The caller applies W_UV to ``out``. One query token per sequence.
"""

from __future__ import annotations

import math

import torch

from .common import check_float, check_gather_index, check_index, check_rank, check_same_device
from .custom_op import custom_op
from .kv_cache import CACHE_DTYPES, BlockAllocator, check_block_table_values, check_slot_values
from .registry import dispatch, register_provider, set_auto_order


class MLACache:
    """One layer's paged latent cache (``latent_cache``) plus its block allocator (shareable)."""

    def __init__(self, num_blocks: int, block_size: int, kv_lora_rank: int, qk_rope_head_dim: int,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 allocator: BlockAllocator | None = None):
        for name, val in (("num_blocks", num_blocks), ("block_size", block_size),
                          ("kv_lora_rank", kv_lora_rank), ("qk_rope_head_dim", qk_rope_head_dim)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"rocm_attn.MLACache: {name} must be a positive int, got {val!r}")
        if dtype not in CACHE_DTYPES:
            raise TypeError(f"rocm_attn.MLACache: dtype must be one of {CACHE_DTYPES}, got {dtype}")
        if allocator is not None and (allocator.num_blocks != num_blocks or allocator.block_size != block_size):
            raise ValueError("rocm_attn.MLACache: the shared allocator has a different num_blocks or block_size")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.latent_cache = torch.zeros(num_blocks, block_size, kv_lora_rank + qk_rope_head_dim, dtype=dtype,
                                        device=self.device)
        self.allocator = allocator if allocator is not None else BlockAllocator(num_blocks, block_size, self.device)

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    def __repr__(self) -> str:
        return (f"MLACache(num_blocks={self.num_blocks}, block_size={self.block_size}, kv_lora_rank="
                f"{self.kv_lora_rank}, qk_rope_head_dim={self.qk_rope_head_dim}, dtype={self.dtype}, "
                f"device={self.device})")


# ---------------------------------------------------------------- checks



def _check_cache(op, latent_cache):
    check_float("latent_cache", op, latent_cache)
    check_rank("latent_cache", op, latent_cache, 3, "[num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]")
    if not latent_cache.is_contiguous():
        raise ValueError(f"rocm_attn.{op}: latent_cache must be contiguous")


def check_mla_reshape_and_cache(kv_c, k_pe, latent_cache, slot_mapping):
    op = "mla_reshape_and_cache"
    _check_cache(op, latent_cache)
    check_float("kv_c", op, kv_c)
    check_float("k_pe", op, k_pe)
    check_rank("kv_c", op, kv_c, 2, "[T, kv_lora_rank]")
    check_rank("k_pe", op, k_pe, 2, "[T, qk_rope_head_dim]")
    if kv_c.shape[0] != k_pe.shape[0] or kv_c.shape[1] + k_pe.shape[1] != latent_cache.shape[2]:
        raise ValueError(f"rocm_attn.{op}: kv_c {tuple(kv_c.shape)} and k_pe {tuple(k_pe.shape)} must have the "
                         f"same tokens and widths adding up to the cache's {latent_cache.shape[2]}")
    check_index(op, "slot_mapping", slot_mapping, 1, "[T]")
    if slot_mapping.shape[0] != kv_c.shape[0]:
        raise ValueError(f"rocm_attn.{op}: slot_mapping has {slot_mapping.shape[0]} entries for "
                         f"{kv_c.shape[0]} tokens")
    check_same_device(op, kv_c=kv_c, k_pe=k_pe, latent_cache=latent_cache, slot_mapping=slot_mapping)


def check_mla_gather_cache(latent_cache, block_table, cu_seq_lens, seq_starts, out):
    op = "mla_gather_cache"
    _check_cache(op, latent_cache)
    check_float("out", op, out)
    check_rank("out", op, out, 2, "[W, kv_lora_rank + qk_rope_head_dim]")
    if out.shape[1] != latent_cache.shape[2]:
        raise ValueError(f"rocm_attn.{op}: out rows are {out.shape[1]} wide; the cache's are {latent_cache.shape[2]}")
    check_gather_index(op, block_table, cu_seq_lens, seq_starts)
    check_same_device(op, latent_cache=latent_cache, block_table=block_table, cu_seq_lens=cu_seq_lens,
                      seq_starts=seq_starts, out=out)


def check_mla_decode(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank):
    op = "mla_decode"
    _check_cache(op, latent_cache)
    check_float("q", op, q)
    check_rank("q", op, q, 3, "[B, H, kv_lora_rank + qk_rope_head_dim]")
    if q.dtype != latent_cache.dtype:
        raise TypeError(f"rocm_attn.{op}: q is {q.dtype} but latent_cache is {latent_cache.dtype}")
    if q.shape[2] != latent_cache.shape[2]:
        raise ValueError(f"rocm_attn.{op}: q rows are {q.shape[2]} wide; the cache's are {latent_cache.shape[2]} "
                         "(absorbed q = [q_nope @ W_UK, q_pe])")
    if not (0 < kv_lora_rank <= q.shape[2]):
        raise ValueError(f"rocm_attn.{op}: kv_lora_rank must be in 1..{q.shape[2]}, got {kv_lora_rank}")
    check_index(op, "seq_lens", seq_lens, 1, "[B]")
    check_index(op, "block_table", block_table, 2, "[B, max_blocks]")
    if seq_lens.shape[0] != q.shape[0] or block_table.shape[0] != q.shape[0]:
        raise ValueError(f"rocm_attn.{op}: q has {q.shape[0]} sequences; seq_lens has {seq_lens.shape[0]} and "
                         f"block_table {block_table.shape[0]} rows")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"rocm_attn.{op}: scale must be a positive finite float, got {scale!r}")
    check_same_device(op, q=q, latent_cache=latent_cache, seq_lens=seq_lens, block_table=block_table)


# ---------------------------------------------------------------- torch references

@register_provider("mla_reshape_and_cache", "torch")
def mla_reshape_and_cache_torch(kv_c, k_pe, latent_cache, slot_mapping) -> None:
    keep = slot_mapping >= 0
    bs = latent_cache.shape[1]
    slots = check_slot_values("mla_reshape_and_cache", slot_mapping, latent_cache.shape[0] * bs)
    rows = torch.cat([kv_c[keep], k_pe[keep]], dim=-1).to(latent_cache.dtype)
    latent_cache[slots // bs, slots % bs] = rows


@register_provider("mla_gather_cache", "torch")
def mla_gather_cache_torch(latent_cache, block_table, cu_seq_lens, seq_starts, out) -> None:
    bs = latent_cache.shape[1]
    cu = cu_seq_lens.long()
    lens = cu[1:] - cu[:-1]
    total = int(cu[-1] - cu[0])
    if total == 0:
        return
    if int(cu[0]) < 0 or int(lens.min()) < 0 or int(cu[-1]) > out.shape[0]:
        raise ValueError(f"rocm_attn.mla_gather_cache: cu_seq_lens must rise from >= 0 to at most out's "
                         f"{out.shape[0]} rows, got {cu.tolist()}")
    check_block_table_values("mla_gather_cache", block_table, seq_starts.long() + lens, latent_cache.shape[0], bs)
    seq_of_row = torch.repeat_interleave(torch.arange(len(lens), device=cu.device), lens)
    rows = torch.arange(total, device=cu.device) + cu[0]
    pos = seq_starts.long()[seq_of_row] + (rows - cu[seq_of_row])
    blk = block_table.long()[seq_of_row, pos // bs]
    out[rows] = latent_cache[blk, pos % bs].to(out.dtype)


@register_provider("mla_decode", "torch")
def mla_decode_torch(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, return_lse=True):
    """fp32, one sequence at a time (the oracle)."""
    B, H, _ = q.shape
    bs = latent_cache.shape[1]
    check_block_table_values("mla_decode", block_table, seq_lens, latent_cache.shape[0], bs)
    out = torch.zeros(B, H, kv_lora_rank, dtype=q.dtype, device=q.device)
    lse = torch.full((H, B), float("-inf"), dtype=torch.float32, device=q.device)
    for b, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        pos = torch.arange(n, device=q.device)
        rows = latent_cache[block_table[b, pos // bs].long(), pos % bs].float()  # [n, L+R]
        s = q[b].float() @ rows.t() * scale  # [H, n]
        l = torch.logsumexp(s, dim=-1)
        out[b] = (torch.softmax(s, dim=-1) @ rows[:, :kv_lora_rank]).to(q.dtype)
        lse[:, b] = l
    return out, lse


# ---------------------------------------------------------------- triton

@register_provider("mla_reshape_and_cache", "triton")
def mla_reshape_and_cache_triton(kv_c, k_pe, latent_cache, slot_mapping) -> None:
    from .triton_kernels.mla_reshape_and_cache import mla_reshape_and_cache_launch

    mla_reshape_and_cache_launch(kv_c, k_pe, latent_cache, slot_mapping)


@register_provider("mla_gather_cache", "triton")
def mla_gather_cache_triton(latent_cache, block_table, cu_seq_lens, seq_starts, out) -> None:
    from .triton_kernels.mla_gather_cache import mla_gather_cache_launch

    mla_gather_cache_launch(latent_cache, block_table, cu_seq_lens, seq_starts, out)


@register_provider("mla_decode", "triton", bf16_dot=True)
def mla_decode_triton(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, return_lse=True):
    from .triton_kernels.mla_decode import mla_decode_launch

    return mla_decode_launch(q, latent_cache, seq_lens, block_table, float(scale), kv_lora_rank)


# ---------------------------------------------------------------- aiter (ROCm)

def _aiter_mla_fn():
    try:
        from aiter.mla import mla_decode_fwd
    except Exception as exc:
        return None, f"aiter.mla.mla_decode_fwd not importable: {exc}"
    return mla_decode_fwd, ""


def _aiter_supports(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, return_lse=True):
    fn, why = _aiter_mla_fn()
    if fn is None:
        return why
    if q.dtype != torch.bfloat16:
        return "AITER MLA decode is used for bf16 only"
    if kv_lora_rank != 512 or q.shape[2] != 576 or q.shape[1] % 16:
        return "AITER MLA decode is used for kv_lora_rank 512 + rope 64 and heads a multiple of 16"
    return None


@register_provider("mla_decode", "aiter", supports=_aiter_supports)
def mla_decode_aiter(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, return_lse=True):
    """AITER's mla_decode_fwd reads a page-size-1 view of the cache: one index per token."""
    import inspect

    fn, _ = _aiter_mla_fn()
    B, H, _ = q.shape
    nb, bs, width = latent_cache.shape
    kv_buffer = latent_cache.view(nb * bs, 1, 1, width)
    lens = seq_lens.long()
    kv_indptr = torch.zeros(B + 1, dtype=torch.int32, device=q.device)
    kv_indptr[1:] = torch.cumsum(lens, 0).to(torch.int32)
    seq_of = torch.repeat_interleave(torch.arange(B, device=q.device), lens)
    pos = torch.arange(int(kv_indptr[-1]), device=q.device) - kv_indptr[:-1].long()[seq_of]
    kv_indices = (block_table.long()[seq_of, pos // bs] * bs + pos % bs).to(torch.int32)
    last_page = torch.ones(B, dtype=torch.int32, device=q.device)
    out = torch.empty(B, H, kv_lora_rank, dtype=q.dtype, device=q.device)
    params = inspect.signature(fn).parameters
    if "qo_indptr" in params:  # newer AITER: varlen queries
        qo_indptr = torch.arange(B + 1, dtype=torch.int32, device=q.device)
        res = fn(q, kv_buffer, out, qo_indptr, kv_indptr, kv_indices, last_page, 1, sm_scale=scale)
    else:
        res = fn(q, kv_buffer, out, kv_indptr, kv_indices, last_page, sm_scale=scale)
    lse = None
    if isinstance(res, tuple) and len(res) >= 2 and isinstance(res[1], torch.Tensor) and res[1].numel() == B * H:
        lse = res[1].float().reshape(B, H).t().contiguous()
    if lse is None and return_lse:  # AITER did not give it back: recompute (only when asked for)
        _, lse = mla_decode_triton(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank)
    return out, lse


def _decode_auto_order(q, *args, **kwargs):
    return ["aiter", "triton", "torch"] if q.device.type == "cuda" else ["torch"]


set_auto_order("mla_decode", _decode_auto_order)


# ---------------------------------------------------------------- custom ops

@custom_op("mla_reshape_and_cache", mutates_args=("latent_cache",))
def mla_reshape_and_cache(kv_c: torch.Tensor, k_pe: torch.Tensor, latent_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    """latent_cache[slot] = [kv_c, k_pe] of each token (negative slots skipped)."""
    check_mla_reshape_and_cache(kv_c, k_pe, latent_cache, slot_mapping)
    if kv_c.shape[0]:
        dispatch("mla_reshape_and_cache", kv_c.device, kv_c, k_pe, latent_cache, slot_mapping)


@mla_reshape_and_cache.register_fake
def _(kv_c, k_pe, latent_cache, slot_mapping) -> None:
    check_mla_reshape_and_cache(kv_c, k_pe, latent_cache, slot_mapping)


@custom_op("mla_gather_cache", mutates_args=("out",))
def mla_gather_cache(latent_cache: torch.Tensor, block_table: torch.Tensor, cu_seq_lens: torch.Tensor,
                     seq_starts: torch.Tensor, out: torch.Tensor) -> None:
    """Copy chunks of sequences' latent rows out of the paged cache into ``out`` (a workspace)."""
    check_mla_gather_cache(latent_cache, block_table, cu_seq_lens, seq_starts, out)
    dispatch("mla_gather_cache", out.device, latent_cache, block_table, cu_seq_lens, seq_starts, out)


@mla_gather_cache.register_fake
def _(latent_cache, block_table, cu_seq_lens, seq_starts, out) -> None:
    check_mla_gather_cache(latent_cache, block_table, cu_seq_lens, seq_starts, out)


@custom_op("mla_decode", mutates_args=())
def mla_decode(q: torch.Tensor, latent_cache: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
               scale: float, kv_lora_rank: int, return_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode -> (out [B,H,kv_lora_rank] in latent space, lse [H,B] fp32). See module doc.
    A sequence of length 0 gives out 0 and lse -inf. return_lse=False: lse comes back empty [H, 0]
    (lets a provider that does not produce it, AITER, skip the work)."""
    check_mla_decode(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank)
    lse_shape = (q.shape[1], q.shape[0] if return_lse else 0)
    if q.shape[0] == 0:
        return q.new_empty((0, q.shape[1], kv_lora_rank)), q.new_empty(lse_shape, dtype=torch.float32)
    out, lse = dispatch("mla_decode", q.device, q, latent_cache, seq_lens, block_table, scale, kv_lora_rank,
                        return_lse)
    return out, (lse if return_lse else q.new_empty(lse_shape, dtype=torch.float32))


@mla_decode.register_fake
def _(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, return_lse=True):
    check_mla_decode(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank)
    return (q.new_empty((q.shape[0], q.shape[1], kv_lora_rank)),
            q.new_empty((q.shape[1], q.shape[0] if return_lse else 0), dtype=torch.float32))
