"""rocm_attn.attention: the one entry point for paged attention, and the backend registry.

    out [T, Hq, D] = attention(q [T,Hq,D], k [T,Hkv,D], v [T,Hkv,D], kv_cache, query_start_loc [B+1],
                               seq_lens [B], block_table [B,max_blocks], slot_mapping [T], *, scale,
                               backend="TRITON_ATTN", sliding_window=None, softcap=None, metadata=None)

It checks the inputs, writes k/v into the cache (reshape_and_cache), then calls the backend. Each
query token attends causally to its sequence's context plus the new tokens up to itself
(seq_lens = context + new). sliding_window=W (HF): key j visible from position i iff 0 <= i-j < W.
softcap=c: scores = c * tanh(scores / c) after scaling.

Pass ``metadata`` (from attention_metadata.build_metadata*) to skip the host-side checks and the
device->host read of the lengths: engines build it once per step and reuse it for every layer.

Backends: ``register_attention_backend(name, fn, layouts)`` with
fn(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window, softcap,
metadata) -> out; ``metadata`` is always an AttentionMetadata there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .attention_metadata import AttentionMetadata, metadata_from_tensors
from .common import check_float, check_rank, check_same_device
from .kv_cache import LAYOUTS, KVCache, check_slot_values
from .platform import get_platform

# Every backend name this library knows, registered or not (issue 4 registers the last two).
KNOWN_BACKENDS = ("TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN", "ROCM_AITER_FA", "ROCM_ATTN")


@dataclass
class AttentionBackend:
    name: str
    fn: Callable
    layouts: tuple[str, ...]
    # () -> str: which implementation runs here and why (for `rocm-attn env`)
    describe: Callable[[], str] | None = None


_BACKENDS: dict[str, AttentionBackend] = {}


def register_attention_backend(name: str, fn: Callable, layouts=("standard", "shuffled"),
                               describe: Callable[[], str] | None = None) -> None:
    layouts = tuple(layouts)
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"register_attention_backend: unknown layout {layout!r}; expected {LAYOUTS}")
    _BACKENDS[name] = AttentionBackend(name, fn, layouts, describe)


def get_attention_backend(name: str, layout: str | None = None) -> AttentionBackend:
    entry = _BACKENDS.get(name)
    if entry is None:
        have = ", ".join(sorted(_BACKENDS)) or "none"
        if name in KNOWN_BACKENDS:
            raise NotImplementedError(f"rocm_attn.attention: backend {name!r} is not registered in this build; "
                                      f"available: {have}")
        raise ValueError(f"rocm_attn.attention: unknown backend {name!r}; available: {have} "
                         f"(known names: {', '.join(KNOWN_BACKENDS)})")
    if layout is not None and layout not in entry.layouts:
        takers = ", ".join(n for n, b in sorted(_BACKENDS.items()) if layout in b.layouts) or "none"
        raise ValueError(f"rocm_attn.attention: backend {name!r} takes the {' / '.join(entry.layouts)} KV layout, "
                         f"not {layout!r}; backends for {layout!r}: {takers}")
    return entry


def available_attention_backends() -> dict[str, dict]:
    """name -> {"registered", "layouts", "implementation"} for every known or registered backend."""
    info = {}
    for name in list(KNOWN_BACKENDS) + sorted(set(_BACKENDS) - set(KNOWN_BACKENDS)):
        entry = _BACKENDS.get(name)
        if entry is None:
            info[name] = {"registered": False, "layouts": [], "implementation": "not built"}
            continue
        desc = entry.describe() if entry.describe else entry.fn.__module__
        info[name] = {"registered": True, "layouts": list(entry.layouts), "implementation": desc}
    return info


# ---------------------------------------------------------------- input checks

def _as_int32(op: str, name: str, t: torch.Tensor, rank: int, doc: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rocm_attn.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"rocm_attn.{op}: {name} must be int32 (or int64), got {t.dtype}")
    check_rank(name, op, t, rank, doc)
    return t if t.dtype == torch.int32 else t.to(torch.int32)


def check_attention_inputs(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, slot_mapping,
                           scale, sliding_window, softcap):
    """Shape/dtype/argument checks (no device reads). Returns the int32 index tensors."""
    op = "attention"
    if not isinstance(kv_cache, KVCache):
        raise TypeError(f"rocm_attn.{op}: kv_cache must be a rocm_attn.KVCache, got {type(kv_cache).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, op, t)
        check_rank(name, op, t, 3, "[T, H, D]")
    if not (q.dtype == k.dtype == v.dtype == kv_cache.dtype):
        raise TypeError(f"rocm_attn.{op}: q, k, v and the cache must share one dtype; got q {q.dtype}, "
                        f"k {k.dtype}, v {v.dtype}, cache {kv_cache.dtype}")
    hkv, d = kv_cache.num_kv_heads, kv_cache.head_dim
    if k.shape != v.shape or k.shape[1:] != (hkv, d):
        raise ValueError(f"rocm_attn.{op}: k and v must be [T, {hkv}, {d}] (the cache's Hkv, D); got "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != d:
        raise ValueError(f"rocm_attn.{op}: q must be [T, Hq, {d}] with T = {k.shape[0]} (k's tokens); "
                         f"got {tuple(q.shape)}")
    if q.shape[1] % hkv:
        raise ValueError(f"rocm_attn.{op}: the number of query heads ({q.shape[1]}) must be a multiple of "
                         f"the number of KV heads ({hkv})")
    qsl = _as_int32(op, "query_start_loc", query_start_loc, 1, "[B+1]")
    lens = _as_int32(op, "seq_lens", seq_lens, 1, "[B]")
    table = _as_int32(op, "block_table", block_table, 2, "[B, max_blocks]")
    if not isinstance(slot_mapping, torch.Tensor) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"rocm_attn.{op}: slot_mapping must be an int64 (or int32) tensor")
    check_rank("slot_mapping", op, slot_mapping, 1, "[T]")
    b = lens.shape[0]
    if qsl.shape[0] != b + 1 or table.shape[0] != b or slot_mapping.shape[0] != q.shape[0]:
        raise ValueError(f"rocm_attn.{op}: with {b} sequences and {q.shape[0]} tokens, query_start_loc needs "
                         f"{b + 1} entries, block_table {b} rows and slot_mapping {q.shape[0]} entries; got "
                         f"{qsl.shape[0]}, {table.shape[0]}, {slot_mapping.shape[0]}")
    check_same_device(op, q=q, k=k, v=v, k_cache=kv_cache.k_cache, query_start_loc=qsl, seq_lens=lens,
                      block_table=table, slot_mapping=slot_mapping)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"rocm_attn.{op}: scale must be a positive finite float, got {scale!r}")
    if sliding_window is not None and (isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
                                       or sliding_window < 1):
        raise ValueError(f"rocm_attn.{op}: sliding_window must be None or an int >= 1, got {sliding_window!r}")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"rocm_attn.{op}: softcap must be None or a positive float, got {softcap!r}")
    return qsl, lens, table


def check_attention_values(md: AttentionMetadata, num_tokens: int, kv_cache: KVCache) -> None:
    """Checks that read the lengths (host copies in ``md``): a wrong one would read or write garbage."""
    op = "attention"
    qsl = md.query_start_loc.tolist()
    if qsl[0] != 0 or qsl[-1] != num_tokens or any(b < a for a, b in zip(qsl, qsl[1:])):
        raise ValueError(f"rocm_attn.{op}: query_start_loc must rise from 0 to T = {num_tokens}, got {qsl}")
    bs = kv_cache.block_size
    for b, (q, c) in enumerate(zip(md.query_lens, md.context_lens)):
        if c < 0:
            raise ValueError(f"rocm_attn.{op}: sequence {b}: seq_len {q + c} is shorter than its {q} new tokens")
    if md.seq_lens.numel() == 0:
        return
    need = torch.div(md.seq_lens.long() + bs - 1, bs, rounding_mode="floor")
    if int(need.max()) > md.block_table.shape[1]:
        raise ValueError(f"rocm_attn.{op}: a sequence needs {int(need.max())} blocks but block_table has "
                         f"{md.block_table.shape[1]} columns")
    used = torch.arange(md.block_table.shape[1], device=need.device)[None, :] < need[:, None]
    blocks = md.block_table[used]
    if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= kv_cache.num_blocks):
        raise ValueError(f"rocm_attn.{op}: block_table points outside the cache (blocks must be in "
                         f"[0, {kv_cache.num_blocks}), got {int(blocks.min())}..{int(blocks.max())})")
    check_slot_values(op, md.slot_mapping, kv_cache.num_blocks * bs)


# ---------------------------------------------------------------- the entry

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, query_start_loc: torch.Tensor,
              seq_lens: torch.Tensor, block_table: torch.Tensor, slot_mapping: torch.Tensor, *, scale: float,
              backend: str = "TRITON_ATTN", sliding_window: int | None = None, softcap: float | None = None,
              metadata: AttentionMetadata | None = None) -> torch.Tensor:
    """Write k/v into ``kv_cache``, then paged causal attention of q over it -> [T, Hq, D]."""
    if not isinstance(kv_cache, KVCache):
        raise TypeError(f"rocm_attn.attention: kv_cache must be a rocm_attn.KVCache, got {type(kv_cache).__name__}")
    entry = get_attention_backend(backend, kv_cache.layout)
    qsl, lens, table = check_attention_inputs(q, k, v, kv_cache, query_start_loc, seq_lens, block_table,
                                              slot_mapping, scale, sliding_window, softcap)
    if metadata is None:
        metadata = metadata_from_tensors(qsl, lens, table, slot_mapping, kv_cache.block_size)
        check_attention_values(metadata, q.shape[0], kv_cache)
    elif metadata.num_tokens != q.shape[0]:
        raise ValueError(f"rocm_attn.attention: metadata is for {metadata.num_tokens} tokens but q has {q.shape[0]}")
    elif metadata.block_size and metadata.block_size != kv_cache.block_size:  # its slots would be wrong
        raise ValueError(f"rocm_attn.attention: metadata was built for blocks of {metadata.block_size} tokens but "
                         f"the cache's blocks hold {kv_cache.block_size}")
    torch.ops.rocm_attn.reshape_and_cache(k, v, kv_cache.k_cache, kv_cache.v_cache, slot_mapping, kv_cache.layout)
    return entry.fn(q, k, v, kv_cache, qsl, lens, table, float(scale), sliding_window, softcap, metadata)


# ---------------------------------------------------------------- the unified backends

def _unified_ours(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window, softcap,
                  metadata):
    if _prefill_only(q, kv_cache, metadata):
        # Nothing cached before this step: the keys are exactly this call's k/v, so the contiguous varlen
        # flash kernel serves it without reading pages (H100, S=4k causal: 0.337 ms vs the unified kernel's
        # 0.471 ms standard / 0.889 ms shuffled, benchmarks/tune_prefill.py). The cache was written above.
        out, _ = torch.ops.rocm_attn.flash_attn_varlen(
            q, k, v, query_start_loc, query_start_loc, int(metadata.max_query_len), int(metadata.max_query_len),
            scale, True, int(sliding_window or 0), float(softcap or 0.0))
        return out
    return torch.ops.rocm_attn.unified_attention(
        q, kv_cache.k_cache, kv_cache.v_cache, query_start_loc, seq_lens, block_table, scale, kv_cache.layout,
        int(sliding_window or 0), float(softcap or 0.0), int(metadata.max_query_len), int(metadata.max_seq_len))


def _prefill_only(q, kv_cache, metadata) -> bool:
    """A batch of fresh prompts only (host lists, no sync), with the cache in q's dtype (an fp8 cache would
    make the cached keys differ from k/v)."""
    return (kv_cache.k_cache.dtype == q.dtype and metadata.max_query_len > 1
            and all(c == 0 for c in metadata.context_lens))


def _aiter_unified_fn():
    """AITER's unified attention function, or (None, why not)."""
    plat = get_platform()
    if not plat.aiter_available:
        return None, plat.aiter_reason
    try:
        from aiter.ops.triton.unified_attention import unified_attention as fn
    except Exception as exc:
        return None, f"aiter.ops.triton.unified_attention not importable: {exc}"
    return fn, ""


def _aiter_unified(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window, softcap,
                   metadata):
    fn, _ = _aiter_unified_fn()
    if fn is None or kv_cache.layout != "standard" or q.device.type != "cuda":
        return _unified_ours(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window,
                             softcap, metadata)
    out = torch.empty_like(q)
    window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
    fn(q, kv_cache.k_cache, kv_cache.v_cache, out, query_start_loc, metadata.max_query_len, seq_lens,
       metadata.max_seq_len, scale, True, window, block_table, float(softcap or 0.0), None, None, None)
    return out


def _describe_ours() -> str:
    plat = get_platform()
    if plat.kind == "cpu":
        return "rocm_attn unified kernel (torch reference on CPU; Triton with TRITON_INTERPRET=1 + use_kernels)"
    if not plat.triton_available:
        return f"torch reference ({plat.triton_reason})"
    return "rocm_attn Triton unified kernel (fresh-prompt-only batches: varlen flash)"


def _describe_aiter() -> str:
    fn, why = _aiter_unified_fn()
    if fn is not None:
        return "AITER unified_attention (standard layout); rocm_attn's kernel for the shuffled layout"
    return f"rocm_attn's unified kernel (as TRITON_ATTN), because AITER is not usable: {why}"


register_attention_backend("TRITON_ATTN", _unified_ours, LAYOUTS, _describe_ours)
register_attention_backend("ROCM_AITER_UNIFIED_ATTN", _aiter_unified, LAYOUTS, _describe_aiter)
