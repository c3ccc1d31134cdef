"""The split attention path: ROCM_AITER_FA (shuffled layout) and ROCM_ATTN (standard layout).

Both backends split a mixed batch by request kind (attention_metadata.classify): decode
(query_len <= 1), prefill (no cached context), extend (new tokens on top of a cached context),
run each kind with the kernel made for it, and scatter the outputs back in input order:

- decode  -> ``paged_decode`` over the paged cache (ROCM_AITER_FA: the shuffled layout, AITER
  ``pa_fwd_asm`` on ROCm where its limits allow; ROCM_ATTN: the standard layout);
- prefill -> ``flash_attn_varlen`` on the new tokens, causal (AITER's varlen flash on ROCm);
- extend  -> the new tokens among themselves (causal, with LSE), then the cached context in rounds
  gathered with ``gather_cache`` into one bounded workspace shared by all the extends of the batch
  (extend_workspace_tokens, default 32768 tokens), each round attended without a causal mask (all
  of it precedes the queries) with LSE and merged with ``merge_attn_states``; a final merge of the
  context (prefix) and new-token (suffix) results.

ROCM_ATTN's multi-token path is this "flash kernel + gathered context" path (not a single
prefix-prefill kernel): the same kernels as ROCM_AITER_FA, reading the standard layout.

Sliding window and soft-cap are supported on both: a context round under a sliding window is
attended with explicit query positions (flash_attn_varlen's q_pos_offsets) and only the context
the window can reach is gathered.

The workspace size: ``extend_workspace(tokens)`` (a context manager), else the
ROCM_ATTN_EXTEND_WORKSPACE_TOKENS environment variable (rocm_attn.Config.extend_workspace_tokens
sets it through the front door), else 32768.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

from .attention import register_attention_backend
from .attention_metadata import AttentionMetadata, classify
from .platform import get_platform

DEFAULT_WORKSPACE_TOKENS = 32768
WORKSPACE_ENV = "ROCM_ATTN_EXTEND_WORKSPACE_TOKENS"
_workspace_tokens: contextvars.ContextVar[int | None] = contextvars.ContextVar("rocm_attn_workspace", default=None)


@contextlib.contextmanager
def extend_workspace(tokens: int) -> Iterator[None]:
    """Use a context workspace of ``tokens`` rows for the extends of calls inside the block."""
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"rocm_attn.extend_workspace: tokens must be an int >= 1, got {tokens!r}")
    token = _workspace_tokens.set(tokens)
    try:
        yield
    finally:
        _workspace_tokens.reset(token)


def workspace_tokens() -> int:
    value = _workspace_tokens.get()
    if value is not None:
        return value
    raw = os.environ.get(WORKSPACE_ENV)
    if raw:
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ValueError(f"{WORKSPACE_ENV}={raw!r}: expected an int >= 1")
        return int(raw)
    return DEFAULT_WORKSPACE_TOKENS


# ---------------------------------------------------------------- the batch split


def _index(rows: list[int], device) -> torch.Tensor | slice:
    """rows as a slice when they are one contiguous run (no gather copy), else an index tensor."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, dtype=torch.long, device=device)


def _cu(lens: list[int], device) -> torch.Tensor:
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _kind_rows(md: AttentionMetadata, kind: str):
    """(sequence ids, token rows) of one kind, in input order."""
    seqs, rows, start = [], [], 0
    for b, (ql, cl) in enumerate(zip(md.query_lens, md.context_lens)):
        if ql > 0 and classify(ql, cl) == kind:
            seqs.append(b)
            rows.extend(range(start, start + ql))
        start += ql
    return seqs, rows


def _decode(q, kv_cache, seq_lens, block_table, scale, window, softcap, seqs, rows):
    s = _index(seqs, q.device)
    return torch.ops.rocm_attn.paged_decode(q[_index(rows, q.device)], kv_cache.k_cache, kv_cache.v_cache,
                                            seq_lens[s], block_table[s], scale, kv_cache.layout, window, softcap)


def _prefill(q, k, v, scale, window, softcap, query_lens):
    cu = _cu(query_lens, q.device)
    mx = max(query_lens)
    out, _ = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu, cu, mx, mx, scale, True, window, softcap)
    return out


def context_rounds(context_ranges: list[tuple[int, int]], budget: int) -> list[list[tuple[int, int]]]:
    """Cut each extend's context range [start, end) into rounds of at most ``budget`` tokens in all:
    round r gives every extend one piece (start, length), possibly empty. Greedy: every round but
    the last is full, so the number of rounds is ceil(total / budget)."""
    left = [end - start for start, end in context_ranges]
    pos = [start for start, _ in context_ranges]
    rounds = []
    while any(left):
        room, pieces = budget, []
        for j in range(len(left)):
            take = min(left[j], room)
            pieces.append((pos[j], take))
            pos[j] += take
            left[j] -= take
            room -= take
        rounds.append(pieces)
    return rounds


def extend_forward(q, k, v, kv_cache, block_table, context_lens, query_lens, scale, window, softcap,
                   workspace: int):
    """Attention of the new tokens q/k/v [T, H, D] (sequences packed in order) of extend requests over
    their cached context (block_table rows, context_lens) and themselves -> out [T, Hq, D].
    A sequence may have an empty context (then it is a plain causal prefill)."""
    dev = q.device
    cu_q = _cu(query_lens, dev)
    mx_q = max(query_lens)
    out, lse = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu_q, cu_q, mx_q, mx_q, scale, True, window, softcap)
    # context a query can see: all of it, or under a window only keys >= first query position - W + 1
    ranges = [(max(0, c - window + 1) if window else 0, c) for c in context_lens]
    rounds = context_rounds(ranges, workspace)
    if not rounds:
        return out
    hkv, d = kv_cache.num_kv_heads, kv_cache.head_dim
    rows = min(workspace, max(sum(n for _, n in pieces) for pieces in rounds))
    k_ws = torch.empty(rows, hkv, d, dtype=kv_cache.dtype, device=dev)
    v_ws = torch.empty(rows, hkv, d, dtype=kv_cache.dtype, device=dev)
    prefix_out = prefix_lse = None
    for pieces in rounds:
        starts = [s for s, _ in pieces]
        lens = [n for _, n in pieces]
        cu_k = _cu(lens, dev)
        torch.ops.rocm_attn.gather_cache(kv_cache.k_cache, kv_cache.v_cache, block_table, cu_k,
                                         torch.tensor(starts, dtype=torch.int32, device=dev), k_ws, v_ws,
                                         kv_cache.layout)
        if window:
            # explicit positions: query i of sequence j is at context_lens[j] + i, the piece starts at starts[j]
            offsets = torch.tensor([c - s for c, s in zip(context_lens, starts)], dtype=torch.int32, device=dev)
            o, l = torch.ops.rocm_attn.flash_attn_varlen(q, k_ws, v_ws, cu_q, cu_k, mx_q, max(lens), scale, True,
                                                          window, softcap, offsets)
        else:
            o, l = torch.ops.rocm_attn.flash_attn_varlen(q, k_ws, v_ws, cu_q, cu_k, mx_q, max(lens), scale, False,
                                                          0, softcap)
        if prefix_out is None:
            prefix_out, prefix_lse = o, l
        else:
            prefix_out, prefix_lse = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, o, l)
    out, _ = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, out, lse)
    return out


def split_attention_forward(q, k, v, kv_cache, seq_lens, block_table, scale, sliding_window, softcap,
                            metadata: AttentionMetadata, workspace: int | None = None) -> torch.Tensor:
    """Decode / extend / prefill each with its own kernel; outputs in input order (see module doc).
    The cache already holds the new tokens (attention() wrote them)."""
    window = int(sliding_window or 0)
    cap = float(softcap or 0.0)
    workspace = workspace_tokens() if workspace is None else workspace
    out = q.new_empty(q.shape)
    dev = q.device
    seqs, rows = _kind_rows(metadata, "decode")
    if seqs:
        out[_index(rows, dev)] = _decode(q, kv_cache, seq_lens, block_table, scale, window, cap, seqs, rows)
    seqs, rows = _kind_rows(metadata, "extend")
    if seqs:
        r = _index(rows, dev)
        s = _index(seqs, dev)
        out[r] = extend_forward(q[r], k[r], v[r], kv_cache, block_table[s],
                                [metadata.context_lens[b] for b in seqs], [metadata.query_lens[b] for b in seqs],
                                scale, window, cap, workspace)
    seqs, rows = _kind_rows(metadata, "prefill")
    if seqs:
        r = _index(rows, dev)
        out[r] = _prefill(q[r], k[r], v[r], scale, window, cap, [metadata.query_lens[b] for b in seqs])
    return out


# ---------------------------------------------------------------- the two backends


def _rocm_aiter_fa(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window, softcap,
                   metadata):
    if kv_cache.layout != "shuffled":
        raise ValueError("rocm_attn.attention: backend 'ROCM_AITER_FA' reads decode from the shuffled KV layout; "
                         "create the cache with KVCache(..., layout='shuffled') (or use ROCM_ATTN / TRITON_ATTN "
                         "for the standard layout)")
    return split_attention_forward(q, k, v, kv_cache, seq_lens, block_table, scale, sliding_window, softcap,
                                   metadata)


def _rocm_attn(q, k, v, kv_cache, query_start_loc, seq_lens, block_table, scale, sliding_window, softcap,
               metadata):
    if kv_cache.layout != "standard":
        raise ValueError("rocm_attn.attention: backend 'ROCM_ATTN' takes the standard KV layout; use "
                         "ROCM_AITER_FA for a shuffled cache")
    return split_attention_forward(q, k, v, kv_cache, seq_lens, block_table, scale, sliding_window, softcap,
                                   metadata)


def _describe(backend: str) -> str:
    plat = get_platform()
    if plat.kind == "cpu":
        kernels = "torch references on CPU (Triton with TRITON_INTERPRET=1 + use_kernels)"
    elif plat.aiter_available:
        kernels = "AITER flash_attn_varlen / pa_fwd_asm where their limits allow, rocm_attn Triton otherwise"
    elif plat.triton_available:
        kernels = "rocm_attn Triton flash (varlen) + paged decode kernels"
    else:
        kernels = f"torch references ({plat.triton_reason})"
    layout = "shuffled" if backend == "ROCM_AITER_FA" else "standard"
    return f"split decode/extend/prefill on the {layout} layout: {kernels}"


register_attention_backend("ROCM_AITER_FA", _rocm_aiter_fa, ("shuffled",), lambda: _describe("ROCM_AITER_FA"))
register_attention_backend("ROCM_ATTN", _rocm_attn, ("standard",), lambda: _describe("ROCM_ATTN"))
