"""What every attention pattern hands the rewrite: one match, and the shared checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .graph_utils import GETITEM, is_call, is_method, value

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@dataclass
class AttentionMatch:
    """torch.ops.rocm_attn.flash_attention(q, k, v, attn_mask, scale, causal, sliding_window, softcap)
    replaces ``anchor``; ``chain`` are the nodes it makes dead (erased when unused). The rewrite may
    swap attn_mask for key_valid + flags (patterns/padding_mask.py)."""

    pattern: str
    anchor: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    attn_mask: fx.Node | None
    scale: float
    causal: bool
    softcap: float = 0.0
    sliding_window: int = 0
    chain: list = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def undo_repeat_kv(node: fx.Node) -> tuple[fx.Node, list]:
    """HF's repeat_kv is x[:, :, None].expand(B, Hkv, n, S, D).reshape(B, Hkv*n, S, D): return x
    (flash_attention does GQA itself) and the dead nodes; anything else is returned unchanged."""
    if not is_method(node, "reshape", "view"):
        return node, []
    expand = node.args[0]
    if not is_method(expand, "expand"):
        return node, []
    index = expand.args[0]
    if not (is_call(index, GETITEM) and isinstance(index.args[1], tuple)):
        return node, []
    idx = index.args[1]
    empty = slice(None, None, None)
    if not (len(idx) == 5 and idx[2] is None and all(i == empty for i in (idx[0], idx[1], idx[3], idx[4]))):
        return node, []
    base, ev, out = index.args[0], value(expand), value(node)
    bv = value(base)
    if bv is None or ev is None or out is None or bv.dim() != 4 or ev.dim() != 5 or out.dim() != 4:
        return node, []
    return base, [node, expand, index]


def check_tensors(q: fx.Node, k: fx.Node, v: fx.Node, anchor: fx.Node) -> str | None:
    """None when flash_attention can take these inputs, else the reason it cannot."""
    qv, kv, vv, out = value(q), value(k), value(v), value(anchor)
    if qv is None or kv is None or vv is None:
        return "no shape information for q/k/v"
    if qv.dim() != 4 or kv.dim() != 4 or vv.dim() != 4:
        return f"q/k/v are not 4-D [B, H, S, D] (got {qv.dim()}/{kv.dim()}/{vv.dim()}-D)"
    if qv.dtype not in SUPPORTED_DTYPES or kv.dtype != qv.dtype or vv.dtype != qv.dtype:
        return f"dtype {qv.dtype}/{kv.dtype}/{vv.dtype} not supported (fp16/bf16/fp32, all equal)"
    if isinstance(qv.shape[-1], torch.SymInt) or qv.shape[-1] > MAX_HEAD_DIM or vv.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {qv.shape[-1]}/{vv.shape[-1]} > {MAX_HEAD_DIM} or not static"
    hq, hkv = qv.shape[1], kv.shape[1]
    if isinstance(hq, torch.SymInt) or isinstance(hkv, torch.SymInt) or hkv == 0 or hq % hkv:
        return f"query heads {hq} not a multiple of key/value heads {hkv}"
    if any(t.requires_grad for t in (qv, kv, vv)) or (out is not None and out.requires_grad):
        return "needs autograd (training); flash_attention is forward-only: run under torch.no_grad()"
    return None


def check_mask(mask) -> str | None:
    if mask is None:
        return None
    mv = value(mask)
    if mv is None:
        return "attn_mask has no shape information"
    if mv.dim() > 4:
        return f"attn_mask is {mv.dim()}-D; expected broadcastable to [B, H, Sq, Sk]"
    if mv.dtype != torch.bool and not mv.dtype.is_floating_point:
        return f"attn_mask dtype {mv.dtype} (bool or float expected)"
    return None
