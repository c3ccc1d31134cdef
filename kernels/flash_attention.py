"""Flash attention on contiguous K/V: a varlen (token-packed) op and a dense batched op.

``torch.ops.rocm_attn.flash_attn_varlen(q[Tq,Hq,D], k[Tk,Hkv,D], v[Tk,Hkv,Dv], cu_seqlens_q[B+1],
cu_seqlens_k[B+1], max_seqlen_q, max_seqlen_k, scale, causal, sliding_window=0, softcap=0.0,
q_pos_offsets=None) -> (out[Tq,Hq,Dv], lse[Hq,Tq] fp32)``

``torch.ops.rocm_attn.flash_attention(q[B,Hq,Sq,D], k[B,Hkv,Sk,D], v[B,Hkv,Sk,Dv], attn_mask, scale,
causal, sliding_window=0, softcap=0.0, key_valid=None) -> out[B,Hq,Sq,Dv]``

Semantics shared by both:
- positions: query i of a sequence with Lq queries and Lk keys sits at position Lk - Lq + i
  (bottom-right alignment, as flash-attn and a KV cache have it). The varlen op takes an optional
  ``q_pos_offsets[B]`` (int32) to place query 0 elsewhere: query i sits at q_pos_offsets[b] + i. The
  split backend uses it to attend a chunk of cached context with the right positions.
- causal: key j visible iff j <= position(i). NOTE: with Sq != Sk this differs from SDPA's
  ``is_causal`` (top-left: j <= i); with Sq == Sk (HF's only is_causal case) they agree.
- sliding_window=W (0 = none), HF semantics: key j visible iff position(i) - j < W (and, when
  causal, >= 0).
- softcap=c (0 = none): scores = c * tanh(scores / c), after scaling, before the mask.
- GQA: Hq % Hkv == 0; query head h reads KV head h // (Hq // Hkv) (SDPA's enable_gqa=True).
- a query row that sees no key gives out 0 and lse -inf (SDPA gives NaN for a fully masked row).

attn_mask (dense op only), exactly SDPA's: bool (True = attend) or additive float, broadcastable
to [B, Hq, Sq, Sk] (e.g. [B,1,Sq,Sk], [B,1,1,Sk], [Sq,Sk]). The dense output is a [B,Hq,Sq,Dv] view
of a contiguous [B,Sq,Hq,Dv] buffer: HF transposes it straight back, for free.

key_valid (dense op only): bool [B, Sk], True = key j of batch row b may be attended (HF's 2-D
attention_mask as key padding). Any 0/1 pattern is exact (left / right padding, holes); it is ANDed
with causal, sliding_window and attn_mask. It replaces a [B,1,Sq,Sk] padding mask by one [B,Sk]
vector: the kernel reads a [BLOCK_N] slice per key block instead of a [BLOCK_M, BLOCK_N] tile.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .registry import dispatch, register_provider, set_auto_order

MAX_HEAD_DIM = 256


# ----------------------------------------------------------------------------- checks


def _check_common(op, q, k, v, scale, sliding_window, softcap):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, op, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"rocm_attn.{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(op, q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"rocm_attn.{op}: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})")
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        raise NotImplementedError(f"rocm_attn.{op}: head dims up to {MAX_HEAD_DIM} are supported, got "
                                  f"D={q.shape[-1]}, Dv={v.shape[-1]}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"rocm_attn.{op}: scale must be a finite float, got {scale!r}")
    if sliding_window < 0:
        raise ValueError(f"rocm_attn.{op}: sliding_window must be >= 0 (0 = none), got {sliding_window}")
    if softcap < 0 or not math.isfinite(softcap):
        raise ValueError(f"rocm_attn.{op}: softcap must be >= 0 (0 = none), got {softcap}")


def _check_heads(op, hq, hkv, hkv_v):
    if hkv != hkv_v:
        raise ValueError(f"rocm_attn.{op}: k has {hkv} heads but v has {hkv_v}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"rocm_attn.{op}: query heads ({hq}) must be a multiple of KV heads ({hkv})")


def check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window, softcap, q_pos_offsets):
    op = "flash_attn_varlen"
    _check_common(op, q, k, v, scale, sliding_window, softcap)
    check_rank("q", op, q, 3, "[Tq, Hq, D]")
    check_rank("k", op, k, 3, "[Tk, Hkv, D]")
    check_rank("v", op, v, 3, "[Tk, Hkv, Dv]")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"rocm_attn.{op}: k has {k.shape[0]} tokens but v has {v.shape[0]}")
    _check_heads(op, q.shape[1], k.shape[1], v.shape[1])
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if t.dtype != torch.int32 or t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"rocm_attn.{op}: {name} must be a 1-D int32 tensor [B+1], "
                             f"got {t.dtype} {tuple(t.shape)}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"rocm_attn.{op}: cu_seqlens_q and cu_seqlens_k must have the same length (B+1)")
    if q_pos_offsets is not None and (q_pos_offsets.dtype != torch.int32
                                      or tuple(q_pos_offsets.shape) != (cu_seqlens_q.numel() - 1,)):
        raise ValueError(f"rocm_attn.{op}: q_pos_offsets must be int32 [B], got "
                         f"{q_pos_offsets.dtype} {tuple(q_pos_offsets.shape)}")
    check_same_device(op, q=q, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, q_pos_offsets=q_pos_offsets)


def check_dense_inputs(q, k, v, attn_mask, scale, sliding_window, softcap, key_valid=None):
    op = "flash_attention"
    _check_common(op, q, k, v, scale, sliding_window, softcap)
    check_rank("q", op, q, 4, "[B, Hq, Sq, D]")
    check_rank("k", op, k, 4, "[B, Hkv, Sk, D]")
    check_rank("v", op, v, 4, "[B, Hkv, Sk, Dv]")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"rocm_attn.{op}: batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"rocm_attn.{op}: k has {k.shape[2]} keys but v has {v.shape[2]}")
    _check_heads(op, q.shape[1], k.shape[1], v.shape[1])
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"rocm_attn.{op}: attn_mask must be bool (True = attend) or float (additive), "
                            f"got {attn_mask.dtype}")
        check_same_device(op, q=q, attn_mask=attn_mask)
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            ok = attn_mask.dim() <= 4 and torch.broadcast_shapes(tuple(attn_mask.shape), full) == full
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"rocm_attn.{op}: attn_mask of shape {tuple(attn_mask.shape)} does not "
                             f"broadcast to [B, Hq, Sq, Sk] = {list(full)}")
    if key_valid is not None:
        if key_valid.dtype != torch.bool or key_valid.dim() != 2:
            raise TypeError(f"rocm_attn.{op}: key_valid must be a bool [B, Sk] tensor (True = attend), got "
                            f"{key_valid.dtype} {tuple(key_valid.shape)}")
        if key_valid.shape[0] != q.shape[0] or key_valid.shape[1] != k.shape[2]:
            raise ValueError(f"rocm_attn.{op}: key_valid of shape {tuple(key_valid.shape)} is not [B, Sk] = "
                             f"{[q.shape[0], k.shape[2]]}")
        check_same_device(op, q=q, key_valid=key_valid)


def expand_mask(attn_mask: torch.Tensor, B: int, H: int, Sq: int, Sk: int) -> torch.Tensor:
    """A stride-0 [B, H, Sq, Sk] view of a broadcastable mask (no copy)."""
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask.expand(B, H, Sq, Sk)


# ----------------------------------------------------------------------------- torch reference


def attend_fp32(q, k, v, scale, causal, sliding_window, softcap, q_pos0, mask=None, key_valid=None):
    """One sequence, fp32. q [Hq,Lq,D], k [Hkv,Lk,D], v [Hkv,Lk,Dv]; query i at position q_pos0 + i.
    mask: None, bool [Hq|1, Lq, Lk] (True = attend) or float (additive); key_valid: None or bool [Lk].
    Returns (out [Hq,Lq,Dv], lse [Hq,Lq])."""
    hq, lq, _ = q.shape
    hkv, lk, dv = v.shape
    group = hq // hkv
    k = k.float().repeat_interleave(group, dim=0)
    v = v.float().repeat_interleave(group, dim=0)
    s = torch.matmul(q.float(), k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    qpos = torch.arange(lq, device=q.device).unsqueeze(1) + q_pos0
    kpos = torch.arange(lk, device=q.device).unsqueeze(0)
    visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        visible &= kpos <= qpos
    if sliding_window > 0:
        visible &= (qpos - kpos) < sliding_window
    if key_valid is not None:
        visible &= key_valid.unsqueeze(0)
    s = s.masked_fill(~visible, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1).clamp_min(torch.finfo(torch.float32).min))
    # rows with lse = -inf (no visible key) give 0 (the clamp above already makes their p 0); a NaN in
    # q, k or v stays NaN, as in SDPA and the Triton kernels
    return torch.matmul(p, v), lse


def flash_attn_varlen_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                            sliding_window=0, softcap=0.0, q_pos_offsets=None):
    tq, hq, _ = q.shape
    dv = v.shape[-1]
    out = torch.zeros(tq, hq, dv, dtype=q.dtype, device=q.device)
    lse = torch.full((hq, tq), float("-inf"), dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for name, cu, rows in (("cu_seqlens_q", cq, tq), ("cu_seqlens_k", ck, k.shape[0])):
        if cu[0] < 0 or cu[-1] > rows or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"rocm_attn.flash_attn_varlen: {name} must rise from >= 0 to at most the "
                             f"{rows} packed tokens, got {cu}")
    offs = q_pos_offsets.tolist() if q_pos_offsets is not None else None
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        if q1 == q0:
            continue
        pos0 = offs[b] if offs is not None else (k1 - k0) - (q1 - q0)
        o, l = attend_fp32(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                           scale, causal, sliding_window, softcap, pos0)
        out[q0:q1] = o.transpose(0, 1).to(q.dtype)
        lse[:, q0:q1] = l
    return out, lse


def dense_out_buffer(q, v):
    B, Hq, Sq, _ = q.shape
    return torch.empty(B, Sq, Hq, v.shape[-1], dtype=q.dtype, device=q.device).transpose(1, 2)


def flash_attention_torch(q, k, v, attn_mask, scale, causal, sliding_window=0, softcap=0.0, key_valid=None):
    B, Hq, Sq, _ = q.shape
    Sk = k.shape[2]
    out = dense_out_buffer(q, v)
    mask = expand_mask(attn_mask, B, Hq, Sq, Sk) if attn_mask is not None else None
    for b in range(B):
        o, _ = attend_fp32(q[b], k[b], v[b], scale, causal, sliding_window, softcap, Sk - Sq,
                           mask[b] if mask is not None else None,
                           key_valid[b] if key_valid is not None else None)
        out[b] = o.to(q.dtype)
    return out


register_provider("flash_attn_varlen", "torch")(flash_attn_varlen_torch)
register_provider("flash_attention", "torch")(flash_attention_torch)


# ----------------------------------------------------------------------------- triton


def _triton_supports(q, k, v, *args, **kwargs):
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM}"
    return None


@register_provider("flash_attn_varlen", "triton", supports=_triton_supports, bf16_dot=True)
def flash_attn_varlen_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                             sliding_window=0, softcap=0.0, q_pos_offsets=None):
    from .triton_kernels.flash_attention import flash_attn_varlen_launch

    return flash_attn_varlen_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                                    causal, sliding_window, softcap, q_pos_offsets)


@register_provider("flash_attention", "triton", supports=_triton_supports, bf16_dot=True)
def flash_attention_triton(q, k, v, attn_mask, scale, causal, sliding_window=0, softcap=0.0, key_valid=None):
    from .triton_kernels.flash_attention import flash_attention_dense_launch

    return flash_attention_dense_launch(q, k, v, attn_mask, scale, causal, sliding_window, softcap, key_valid)


# ----------------------------------------------------------------------------- aiter (ROCm)


def _aiter_varlen_supports(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                           sliding_window=0, softcap=0.0, q_pos_offsets=None):
    import aiter

    if not hasattr(aiter, "flash_attn_varlen_func"):
        return "this aiter has no flash_attn_varlen_func"
    if softcap > 0 or q_pos_offsets is not None:
        return "softcap / explicit query positions are not passed to AITER's varlen flash"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return "AITER flash attention takes fp16/bf16"
    if q.shape[-1] != v.shape[-1] or q.shape[-1] not in (64, 128):
        return "AITER path used for D = Dv in (64, 128) only"
    return None


@register_provider("flash_attn_varlen", "aiter", supports=_aiter_varlen_supports)
def flash_attn_varlen_aiter(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                            sliding_window=0, softcap=0.0, q_pos_offsets=None):
    import aiter

    # flash-attn window convention: query i sees keys in [i - left, i + right]; HF's W -> left = W - 1.
    window = (sliding_window - 1, 0 if causal else -1) if sliding_window > 0 else (-1, -1)
    out, lse = aiter.flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        softmax_scale=scale, causal=causal, window_size=window, return_lse=True,
    )[:2]
    return out, lse.float().reshape(q.shape[1], q.shape[0])


def _varlen_auto_order(q, *args, **kwargs):
    return ["aiter", "triton", "torch"] if q.device.type == "cuda" else ["torch"]


set_auto_order("flash_attn_varlen", _varlen_auto_order)


# ----------------------------------------------------------------------------- custom ops


@custom_op("flash_attn_varlen", mutates_args=())
def flash_attn_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool,
    sliding_window: int = 0, softcap: float = 0.0, q_pos_offsets: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-packed flash attention -> (out [Tq,Hq,Dv], lse [Hq,Tq] fp32, natural log). See module doc."""
    check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window, softcap, q_pos_offsets)
    return dispatch("flash_attn_varlen", q.device, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                    max_seqlen_k, scale, causal, sliding_window, softcap, q_pos_offsets)


@flash_attn_varlen.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, sliding_window=0,
      softcap=0.0, q_pos_offsets=None):
    check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, sliding_window, softcap, q_pos_offsets)
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[-1]))
    return out, q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@custom_op("flash_attention", mutates_args=())
def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
    scale: float, causal: bool, sliding_window: int = 0, softcap: float = 0.0,
    key_valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Dense batched flash attention, SDPA semantics for attn_mask and GQA -> [B,Hq,Sq,Dv] (a view of a
    contiguous [B,Sq,Hq,Dv] buffer); key_valid [B,Sk] bool = per-row key padding. Fully masked rows give
    0, not NaN. See module doc."""
    check_dense_inputs(q, k, v, attn_mask, scale, sliding_window, softcap, key_valid)
    return dispatch("flash_attention", q.device, q, k, v, attn_mask, scale, causal, sliding_window, softcap,
                    key_valid)


@flash_attention.register_fake
def _(q, k, v, attn_mask, scale, causal, sliding_window=0, softcap=0.0, key_valid=None):
    check_dense_inputs(q, k, v, attn_mask, scale, sliding_window, softcap, key_valid)
    return dense_out_buffer(q, v)
