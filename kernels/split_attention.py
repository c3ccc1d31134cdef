"""The split attention path: ROCM_AITER_FA (shuffled layout) and ROCM_ATTN (standard layout).

Both backends split a mixed batch by request kind (attention_metadata.classify): decode
(query_len <= 1), prefill (no cached context), extend (new tokens on top of a cached context),
run each kind with the kernel made for it, and scatter the outputs back in input order:

- decode  -> ``paged_decode`` over the paged cache (ROCM_AITER_FA: the shuffled layout, AITER
  ``pa_fwd_asm`` on ROCm where its limits allow; ROCM_ATTN: the standard layout);
- prefill -> ``flash_attn_varlen`` on the new tokens, causal (AITER's varlen flash on ROCm);
- extend  -> the new tokens among themselves (causal, with LSE), then the cached context in rounds
  gathered with ``gather_cache`` into one bounded workspace shared by all the extends of the batch and
  allocated once per step (extend_workspace_tokens, default 32768 tokens), each round attended
  without a causal mask (all of it precedes the queries) with LSE and merged with
  ``merge_attn_states``; a final merge of the context (prefix) and new-token (suffix) results.

The split comes from the metadata's host lists (query_lens / context_lens): AttentionMetadata.split_plan
builds every index tensor of the step in ONE host->device copy on the first call and caches it, so the
other layers of the step run with no host sync and no copy (and can be captured in a CUDA graph). A batch
already in kind order (decodes, then extends, then prefills, as vLLM schedules it) is read through slices;
an interleaved one is gathered into kind order with one index_select per tensor and the output put back with
one more. A batch of one kind returns its kernel's output as is.

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
from .attention_metadata import (
    AttentionMetadata,
    SplitPlan,
    build_split_plan,
    classify,
    context_rounds,  # noqa: F401  (re-exported: mla_attention, tests)
)
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

# _index / _cu / _kind_rows: per-call helpers kept for mla_attention (the split backends use SplitPlan)


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


def _rows(t: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    """Rows of seq_lens / block_table: a view for a slice, one index_select otherwise."""
    return t[index] if isinstance(index, slice) else t.index_select(0, index)


def _workspace(plan: SplitPlan, kv_cache, rows: int):
    """The extends' (k, v) context workspace: allocated once per step (per cache shape); every layer of
    the step reuses it."""
    key = (kv_cache.dtype, kv_cache.num_kv_heads, kv_cache.head_dim)
    ws = plan.workspaces.get(key)
    if ws is None or ws[0].shape[0] < rows:
        ws = tuple(torch.empty(rows, kv_cache.num_kv_heads, kv_cache.head_dim, dtype=kv_cache.dtype,
                               device=kv_cache.k_cache.device) for _ in range(2))
        plan.workspaces[key] = ws
    return ws[0][:rows], ws[1][:rows]


def extend_forward(q, k, v, kv_cache, block_table, context_lens, query_lens, scale, window, softcap,
                   workspace: int, plan: SplitPlan | None = None):
    """Attention of the new tokens q/k/v [T, H, D] (sequences packed in order) of extend requests over
    their cached context (block_table rows, context_lens) and themselves -> out [T, Hq, D].
    A sequence may have an empty context (then it is a plain causal prefill). ``plan``: the step's
    SplitPlan (its index tensors are already on the device); without it one is built here."""
    if plan is None:
        plan = build_split_plan(query_lens, context_lens, q.device, workspace, window, all_extend=True)
    part = plan.extend
    cu_q, mx_q = part.cu_seqlens, part.max_query_len
    attend = torch.ops.rocm_attn.flash_attn_varlen
    out, lse = attend(q, k, v, cu_q, cu_q, mx_q, mx_q, scale, True, window, softcap)
    rounds, rows = plan.extend_rounds[(workspace, window)]
    if not rounds:
        return out
    k_ws, v_ws = _workspace(plan, kv_cache, rows)
    prefix_out = prefix_lse = None
    for r in rounds:
        torch.ops.rocm_attn.gather_cache(kv_cache.k_cache, kv_cache.v_cache, block_table, r.cu_seqlens_k,
                                         r.seq_starts, k_ws, v_ws, kv_cache.layout)
        if window:
            # explicit positions: query i of extend j is at context_lens[j] + i, its piece starts at starts[j]
            o, l = attend(q, k_ws, v_ws, cu_q, r.cu_seqlens_k, mx_q, r.max_seqlen_k, scale, True, window,
                          softcap, r.q_pos_offsets)
        else:
            o, l = attend(q, k_ws, v_ws, cu_q, r.cu_seqlens_k, mx_q, r.max_seqlen_k, scale, False, 0, softcap)
        if prefix_out is None:
            prefix_out, prefix_lse = o, l
        else:
            prefix_out, prefix_lse = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, o, l)
    out, _ = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, out, lse)
    return out


def split_attention_forward(q, k, v, kv_cache, seq_lens, block_table, scale, sliding_window, softcap,
                            metadata: AttentionMetadata, workspace: int | None = None) -> torch.Tensor:
    """Decode / extend / prefill each with its own kernel; outputs in input order (see module doc).
    The cache already holds the new tokens (attention() wrote them). The split comes from the metadata's
    host lists (metadata.split_plan, built once per step): no host sync, no host->device copy here."""
    window = int(sliding_window or 0)
    cap = float(softcap or 0.0)
    workspace = workspace_tokens() if workspace is None else workspace
    plan = metadata.split_plan(q.device, workspace, window)
    if plan.token_order is not None:  # kinds interleaved: one gather each into kind order
        q, k, v = (t.index_select(0, plan.token_order) for t in (q, k, v))
    outs = []
    dec = plan.decode
    if dec.num_seqs:
        lens, table = _rows(seq_lens, dec.seq_index), _rows(block_table, dec.seq_index)
        outs.append(torch.ops.rocm_attn.paged_decode(q[dec.tokens], kv_cache.k_cache, kv_cache.v_cache, lens,
                                                     table, scale, kv_cache.layout, window, cap))
    ext = plan.extend
    if ext.num_seqs:
        outs.append(extend_forward(q[ext.tokens], k[ext.tokens], v[ext.tokens], kv_cache,
                                   _rows(block_table, ext.seq_index), ext.context_lens, ext.query_lens, scale,
                                   window, cap, workspace, plan))
    pre = plan.prefill
    if pre.num_seqs:
        cu, mx, rows = pre.cu_seqlens, pre.max_query_len, pre.tokens
        out, _ = torch.ops.rocm_attn.flash_attn_varlen(q[rows], k[rows], v[rows], cu, cu, mx, mx, scale, True,
                                                       window, cap)
        outs.append(out)
    if not outs:
        return q.new_empty(q.shape)
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if plan.input_order is None else out.index_select(0, plan.input_order)


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
