"""MLA attention backends: TRITON_MLA and ROCM_AITER_MLA, over the paged latent cache (kernels/mla.py).

    out [T, H, v_head_dim] = mla_attention(q [T,H,nope+R], kv_c [T,L], k_pe [T,R], mla_cache, weights,
                                           query_start_loc, seq_lens, block_table, slot_mapping, *, scale,
                                           backend="TRITON_MLA", metadata=None)

q is HF's query_states per token ([q_nope, rotated q_pe]); kv_c the RMS-normed compressed KV and k_pe
the rotated rope key of the new tokens. The call writes [kv_c, k_pe] into the cache, then splits the
batch by request kind (attention_metadata.classify) and returns outputs in input order:

- decode (absorbed): q_lat = q_nope @ W_UK per head (into the latent space), MQA of [q_lat, q_pe] over
  the latent rows (``mla_decode``: our Triton split-KV kernel, AITER ``mla_decode_fwd`` on ROCm for
  ROCM_AITER_MLA), then out = o_lat @ W_UV^T. Per token: reads the latent rows once for all heads.
- prefill (non-absorbed): up-project the new tokens' latents to per-head K = [k_nope, k_pe] (nope + R)
  and V (v_head_dim), ``flash_attn_varlen`` causal.
- extend: the new tokens among themselves as in prefill (with LSE), then the cached context in rounds
  gathered from the latent cache into a bounded workspace (split_attention.workspace_tokens(), shared
  by the extends), each round up-projected and attended without a causal mask, merged by LSE.

``MLAWeights`` holds W_UK / W_UV^T laid out for the two batched matmuls, prepared once per layer
(``MLAWeights.from_kv_b_proj``; cache it on the module, as ``mla_weights_for`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .attention_metadata import AttentionMetadata, metadata_from_tensors
from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .mla import MLACache
from .platform import get_platform
from .registry import Kernels, requested_kernels, use_kernels
from .split_attention import _cu, _index, _kind_rows, context_rounds, workspace_tokens

MLA_BACKENDS = ("TRITON_MLA", "ROCM_AITER_MLA")


@dataclass
class MLAWeights:
    """kv_b_proj split per head. kv_b_weight [H*(nope+v), L] (the up-projection, non-absorbed path);
    w_uk [H, nope, L] (q_nope @ w_uk[h] -> latent query); w_uv_t [H, L, v] (o_lat @ w_uv_t[h] -> output)."""

    num_heads: int
    qk_nope_head_dim: int
    v_head_dim: int
    kv_lora_rank: int
    kv_b_weight: torch.Tensor
    w_uk: torch.Tensor
    w_uv_t: torch.Tensor

    @classmethod
    def from_kv_b_proj(cls, weight: torch.Tensor, num_heads: int, qk_nope_head_dim: int,
                       v_head_dim: int) -> "MLAWeights":
        """From kv_b_proj.weight [H*(nope+v), L] (nn.Linear layout). Copies once; call once per layer."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError("MLAWeights.from_kv_b_proj: weight must be a 2-D [H*(nope+v), L] tensor")
        check_float("kv_b_proj.weight", "MLAWeights.from_kv_b_proj", weight)
        if weight.shape[0] != num_heads * (qk_nope_head_dim + v_head_dim):
            raise ValueError(f"MLAWeights.from_kv_b_proj: weight has {weight.shape[0]} rows; {num_heads} heads x "
                             f"({qk_nope_head_dim} + {v_head_dim}) = "
                             f"{num_heads * (qk_nope_head_dim + v_head_dim)} expected")
        w = weight.detach()
        per_head = w.view(num_heads, qk_nope_head_dim + v_head_dim, w.shape[1])
        return cls(num_heads, qk_nope_head_dim, v_head_dim, w.shape[1], w.contiguous(),
                   per_head[:, :qk_nope_head_dim].contiguous(),
                   per_head[:, qk_nope_head_dim:].transpose(1, 2).contiguous())


def mla_weights_for(module) -> MLAWeights:
    """MLAWeights of a HF DeepseekV2/V3-style attention module, built on first use and kept on it.
    Rebuilt if kv_b_proj's weight tensor is replaced (e.g. after loading a checkpoint)."""
    weight = module.kv_b_proj.weight
    cached = getattr(module, "_rocm_attn_mla_weights", None)
    if cached is not None and cached[0] is weight and cached[1] == weight._version:
        return cached[2]
    if not weight.is_floating_point() or weight.element_size() == 1:
        raise NotImplementedError("rocm_attn MLA: kv_b_proj must hold a bf16/fp16/fp32 weight (not quantized); "
                                  "skip kv_b_proj when quantizing (skip_modules)")
    w = MLAWeights.from_kv_b_proj(weight, module.num_heads, module.qk_nope_head_dim, module.v_head_dim)
    module._rocm_attn_mla_weights = (weight, weight._version, w)
    return w


# ---------------------------------------------------------------- checks

def check_mla_attention_inputs(q, kv_c, k_pe, mla_cache, weights, query_start_loc, seq_lens, block_table,
                               slot_mapping, scale, backend):
    op = "mla_attention"
    if backend not in MLA_BACKENDS:
        raise ValueError(f"rocm_attn.{op}: unknown MLA backend {backend!r}; available: {', '.join(MLA_BACKENDS)}")
    if not isinstance(mla_cache, MLACache):
        raise TypeError(f"rocm_attn.{op}: mla_cache must be a rocm_attn MLACache, got {type(mla_cache).__name__}")
    if not isinstance(weights, MLAWeights):
        raise TypeError(f"rocm_attn.{op}: weights must be MLAWeights (MLAWeights.from_kv_b_proj), "
                        f"got {type(weights).__name__}")
    for name, t, rank, doc in (("q", q, 3, "[T, H, qk_nope_head_dim + qk_rope_head_dim]"),
                               ("kv_c", kv_c, 2, "[T, kv_lora_rank]"), ("k_pe", k_pe, 2, "[T, qk_rope_head_dim]")):
        check_float(name, op, t)
        check_rank(name, op, t, rank, doc)
    if not (q.dtype == kv_c.dtype == k_pe.dtype == mla_cache.dtype == weights.w_uk.dtype):
        raise TypeError(f"rocm_attn.{op}: q, kv_c, k_pe, the cache and the weights must share a dtype; got "
                        f"{q.dtype}, {kv_c.dtype}, {k_pe.dtype}, {mla_cache.dtype}, {weights.w_uk.dtype}")
    L, R, H = mla_cache.kv_lora_rank, mla_cache.qk_rope_head_dim, weights.num_heads
    T = q.shape[0]
    if weights.kv_lora_rank != L:
        raise ValueError(f"rocm_attn.{op}: weights are for kv_lora_rank {weights.kv_lora_rank}, the cache for {L}")
    if tuple(q.shape[1:]) != (H, weights.qk_nope_head_dim + R):
        raise ValueError(f"rocm_attn.{op}: q must be [T, {H}, {weights.qk_nope_head_dim + R}] "
                         f"(heads, nope + rope), got {tuple(q.shape)}")
    if tuple(kv_c.shape) != (T, L) or tuple(k_pe.shape) != (T, R):
        raise ValueError(f"rocm_attn.{op}: kv_c must be [{T}, {L}] and k_pe [{T}, {R}]; got "
                         f"{tuple(kv_c.shape)} and {tuple(k_pe.shape)}")
    for name, t, rank in (("query_start_loc", query_start_loc, 1), ("seq_lens", seq_lens, 1),
                          ("block_table", block_table, 2), ("slot_mapping", slot_mapping, 1)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != rank:
            raise TypeError(f"rocm_attn.{op}: {name} must be a {rank}-D int32/int64 tensor")
    b = seq_lens.shape[0]
    if query_start_loc.shape[0] != b + 1 or block_table.shape[0] != b or slot_mapping.shape[0] != T:
        raise ValueError(f"rocm_attn.{op}: with {b} sequences and {T} tokens, query_start_loc needs {b + 1} "
                         f"entries, block_table {b} rows and slot_mapping {T}")
    check_same_device(op, q=q, kv_c=kv_c, k_pe=k_pe, latent_cache=mla_cache.latent_cache,
                      query_start_loc=query_start_loc, seq_lens=seq_lens, block_table=block_table,
                      slot_mapping=slot_mapping)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"rocm_attn.{op}: scale must be a positive finite float, got {scale!r}")


# ---------------------------------------------------------------- the three paths

def up_project(latent: torch.Tensor, weights: MLAWeights, kv_lora_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent rows [N, L+R] -> per-head K [N, H, nope+R] and V [N, H, v] (the non-absorbed form)."""
    H, P = weights.num_heads, weights.qk_nope_head_dim
    kv = torch.nn.functional.linear(latent[:, :kv_lora_rank], weights.kv_b_weight).view(latent.shape[0], H, -1)
    k_pe = latent[:, None, kv_lora_rank:]
    k = torch.cat([kv[..., :P], k_pe.expand(-1, H, -1)], dim=-1)
    return k, kv[..., P:]


def _absorbed_decode(q, mla_cache, weights, seq_lens, block_table, scale, force_triton):
    P, L = weights.qk_nope_head_dim, mla_cache.kv_lora_rank
    q_lat = torch.bmm(q[..., :P].transpose(0, 1), weights.w_uk).transpose(0, 1)  # [Td, H, L]
    q_abs = torch.cat([q_lat, q[..., P:]], dim=-1).contiguous()
    if force_triton:
        with use_kernels("triton"):
            o_lat, _ = torch.ops.rocm_attn.mla_decode(q_abs, mla_cache.latent_cache, seq_lens, block_table, scale, L,
                                                      False)
    else:
        o_lat, _ = torch.ops.rocm_attn.mla_decode(q_abs, mla_cache.latent_cache, seq_lens, block_table, scale, L,
                                                  False)
    return torch.bmm(o_lat.transpose(0, 1), weights.w_uv_t).transpose(0, 1)  # [Td, H, v]


def _new_tokens_attention(q, kv_c, k_pe, weights, query_lens, scale):
    k, v = up_project(torch.cat([kv_c, k_pe], dim=-1), weights, kv_c.shape[1])
    cu = _cu(query_lens, q.device)
    mx = max(query_lens)
    return torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu, cu, mx, mx, scale, True)


def _extend(q, kv_c, k_pe, mla_cache, weights, block_table, context_lens, query_lens, scale, workspace):
    out, lse = _new_tokens_attention(q, kv_c, k_pe, weights, query_lens, scale)
    rounds = context_rounds([(0, c) for c in context_lens], workspace)
    if not rounds:
        return out
    dev = q.device
    cu_q = _cu(query_lens, dev)
    mx_q = max(query_lens)
    rows = max(sum(n for _, n in pieces) for pieces in rounds)
    ws = torch.empty(rows, mla_cache.latent_dim, dtype=mla_cache.dtype, device=dev)
    prefix_out = prefix_lse = None
    for pieces in rounds:
        lens = [n for _, n in pieces]
        cu_k = _cu(lens, dev)
        starts = torch.tensor([s for s, _ in pieces], dtype=torch.int32, device=dev)
        torch.ops.rocm_attn.mla_gather_cache(mla_cache.latent_cache, block_table, cu_k, starts, ws)
        k, v = up_project(ws[: sum(lens)], weights, mla_cache.kv_lora_rank)
        o, l = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu_q, cu_k, mx_q, max(lens), scale, False)
        if prefix_out is None:
            prefix_out, prefix_lse = o, l
        else:
            prefix_out, prefix_lse = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, o, l)
    out, _ = torch.ops.rocm_attn.merge_attn_states(prefix_out, prefix_lse, out, lse)
    return out


def mla_attention(q: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, mla_cache: MLACache,
                  weights: MLAWeights, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                  block_table: torch.Tensor, slot_mapping: torch.Tensor, *, scale: float,
                  backend: str = "TRITON_MLA", metadata: AttentionMetadata | None = None,
                  workspace: int | None = None) -> torch.Tensor:
    """Write the new latents into ``mla_cache``, then MLA attention of q over each sequence -> [T, H, v]."""
    check_mla_attention_inputs(q, kv_c, k_pe, mla_cache, weights, query_start_loc, seq_lens, block_table,
                               slot_mapping, scale, backend)
    qsl, lens, table = (t.to(torch.int32) for t in (query_start_loc, seq_lens, block_table))
    if metadata is None:
        metadata = metadata_from_tensors(qsl, lens, table, slot_mapping, mla_cache.block_size)
        if any(c < 0 for c in metadata.context_lens):
            raise ValueError("rocm_attn.mla_attention: a seq_len is shorter than its number of new tokens")
    elif metadata.num_tokens != q.shape[0]:
        raise ValueError(f"rocm_attn.mla_attention: metadata is for {metadata.num_tokens} tokens but q has "
                         f"{q.shape[0]}")
    torch.ops.rocm_attn.mla_reshape_and_cache(kv_c, k_pe, mla_cache.latent_cache, slot_mapping)
    workspace = workspace_tokens() if workspace is None else workspace
    # TRITON_MLA: our kernel on the GPU unless the caller forced a provider; ROCM_AITER_MLA: auto (AITER first)
    force_triton = backend == "TRITON_MLA" and q.is_cuda and requested_kernels() is Kernels.AUTO
    out = q.new_empty(q.shape[0], weights.num_heads, weights.v_head_dim)
    dev = q.device
    seqs, rows = _kind_rows(metadata, "decode")
    if seqs:
        r, s = _index(rows, dev), _index(seqs, dev)
        out[r] = _absorbed_decode(q[r], mla_cache, weights, lens[s], table[s], float(scale), force_triton)
    seqs, rows = _kind_rows(metadata, "extend")
    if seqs:
        r, s = _index(rows, dev), _index(seqs, dev)
        out[r] = _extend(q[r], kv_c[r], k_pe[r], mla_cache, weights, table[s],
                         [metadata.context_lens[b] for b in seqs], [metadata.query_lens[b] for b in seqs],
                         float(scale), workspace)
    seqs, rows = _kind_rows(metadata, "prefill")
    if seqs:
        r = _index(rows, dev)
        out[r], _ = _new_tokens_attention(q[r], kv_c[r], k_pe[r], weights, [metadata.query_lens[b] for b in seqs],
                                          float(scale))
    return out


def describe_mla_backend(backend: str) -> str:
    plat = get_platform()
    if plat.kind == "cpu":
        return "torch references on CPU (Triton with TRITON_INTERPRET=1 + use_kernels)"
    flash = "rocm_attn Triton varlen flash (D 192 / Dv 128) for prefill/extend"
    if backend == "ROCM_AITER_MLA" and plat.aiter_available:
        return f"AITER mla_decode_fwd for decode where importable (else rocm_attn Triton); {flash}"
    return f"rocm_attn Triton split-KV latent decode; {flash}"


# ---------------------------------------------------------------- dense op (the torch.compile path)
# In a compiled HF graph the latents are plain tensors (HF's cache holds kv_c and k_pe); the rewrite
# (patterns/attention_mla.py) replaces HF's up-projection + SDPA with this op.

ABSORB_MAX_QUERIES = 16  # queries per sequence up to which the absorbed (latent-space) form is used


def check_mla_dense_inputs(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale):
    op = "mla_attention_dense"
    for name, t in (("q", q), ("kv_c", kv_c), ("k_pe", k_pe), ("w_uk", w_uk), ("w_uv_t", w_uv_t)):
        check_float(name, op, t)
    check_rank("q", op, q, 4, "[B, H, Sq, nope + R]")
    check_rank("kv_c", op, kv_c, 4, "[B, 1, Sk, L]")
    check_rank("k_pe", op, k_pe, 4, "[B, 1, Sk, R]")
    check_rank("w_uk", op, w_uk, 3, "[H, nope, L]")
    check_rank("w_uv_t", op, w_uv_t, 3, "[H, L, V]")
    B, H, Sq, D = q.shape
    H_, P, L = w_uk.shape
    R = k_pe.shape[-1]
    if kv_c.shape[:3] != k_pe.shape[:3] or kv_c.shape[0] != B or kv_c.shape[1] != 1 or kv_c.shape[3] != L:
        raise ValueError(f"rocm_attn.{op}: kv_c {tuple(kv_c.shape)} / k_pe {tuple(k_pe.shape)} must be [B, 1, Sk, L] "
                         f"/ [B, 1, Sk, R] with B = {B}, L = {L}")
    if H_ != H or D != P + R or w_uv_t.shape[:2] != (H, L):
        raise ValueError(f"rocm_attn.{op}: q {tuple(q.shape)}, w_uk {tuple(w_uk.shape)}, w_uv_t {tuple(w_uv_t.shape)} "
                         f"do not agree (q is [B, H, Sq, nope + R], w_uk [H, nope, L], w_uv_t [H, L, V])")
    if not (q.dtype == kv_c.dtype == k_pe.dtype == w_uk.dtype == w_uv_t.dtype):
        raise TypeError(f"rocm_attn.{op}: all inputs must share a dtype")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"rocm_attn.{op}: scale must be a finite float, got {scale!r}")
    if attn_mask is not None and attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"rocm_attn.{op}: attn_mask must be bool (True = attend) or float (additive)")


def _mla_dense_absorbed(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale, causal):
    B, H, Sq, _ = q.shape
    P, L, Sk = w_uk.shape[1], w_uk.shape[2], kv_c.shape[2]
    q_lat = torch.matmul(q[..., :P], w_uk)  # [B, H, Sq, L]
    # all heads' queries as rows of one matrix: the latents are read once, not once per head
    s = (torch.matmul(q_lat.reshape(B, 1, H * Sq, L), kv_c.transpose(-1, -2))
         + torch.matmul(q[..., P:].reshape(B, 1, H * Sq, -1), k_pe.transpose(-1, -2)))
    s = s.float().view(B, H, Sq, Sk) * scale
    if causal:  # bottom-right aligned: query i sits at position Sk - Sq + i
        qpos = torch.arange(Sq, device=q.device)[:, None] + (Sk - Sq)
        s = s.masked_fill(torch.arange(Sk, device=q.device)[None, :] > qpos, float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.float()
    # a fully masked row (every score -inf) -> 0; a NaN in the inputs stays NaN
    p = torch.softmax(s, dim=-1).masked_fill(torch.isneginf(s).all(-1, keepdim=True), 0.0).to(q.dtype)
    o_lat = torch.matmul(p.reshape(B, 1, H * Sq, Sk), kv_c).view(B, H, Sq, L)
    return torch.matmul(o_lat, w_uv_t)  # [B, H, Sq, V]


@custom_op("mla_attention_dense", mutates_args=())
def mla_attention_dense(q: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor, w_uk: torch.Tensor,
                        w_uv_t: torch.Tensor, attn_mask: Optional[torch.Tensor], scale: float,
                        causal: bool) -> torch.Tensor:
    """MLA over contiguous latents, SDPA semantics (mask, bottom-right causal) -> [B, H, Sq, V].
    q [B,H,Sq,nope+R] (rope applied), kv_c [B,1,Sk,L], k_pe [B,1,Sk,R], w_uk [H,nope,L], w_uv_t [H,L,V].
    Sq <= ABSORB_MAX_QUERIES: absorbed (attention in latent space); else up-project K/V and flash_attention."""
    check_mla_dense_inputs(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale)
    if q.shape[2] <= ABSORB_MAX_QUERIES:
        return _mla_dense_absorbed(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale, causal).contiguous()
    B, H, _, _ = q.shape
    Sk, R = kv_c.shape[2], k_pe.shape[-1]
    k = torch.cat([torch.matmul(kv_c, w_uk.transpose(-1, -2)), k_pe.expand(B, H, Sk, R)], dim=-1)
    v = torch.matmul(kv_c, w_uv_t)
    return torch.ops.rocm_attn.flash_attention(q, k, v, attn_mask, scale, causal).contiguous()


@mla_attention_dense.register_fake
def _(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale, causal):
    check_mla_dense_inputs(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, scale)
    return q.new_empty((*q.shape[:3], w_uv_t.shape[-1]))
