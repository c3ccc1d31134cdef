"""F.scaled_dot_product_attention as HF's sdpa_attention_forward calls it.

    [repeat_kv: k[:, :, None].expand(..).reshape(..)]   (or enable_gqa=True)
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask | None, dropout_p=0.0, scale=s, is_causal=c)

-> flash_attention(q, k_unrepeated, v_unrepeated, mask, s, c). The rewrite turns the mask into a
key_valid vector + causal / sliding_window flags where padding_mask.py proves it is HF's padding mask;
otherwise HF's own 4-D mask passes through unchanged, keeping its exact meaning. is_causal=True is
only taken with Sq == Sk (SDPA aligns causal top-left, flash_attention bottom-right; HF slices K/V to
Sq for causal prefill so they agree).
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from .attention_common import AttentionMatch, check_mask, check_tensors, undo_repeat_kv
from .graph_utils import arg, is_call, is_number, statically_equal, value

NAME = "sdpa"


def is_site(node: fx.Node) -> bool:
    return is_call(node, F.scaled_dot_product_attention)


def match(node: fx.Node) -> AttentionMatch | str:
    """An AttentionMatch, or the reason this SDPA call stays as HF wrote it."""
    q, k, v = arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")
    mask = arg(node, 3, "attn_mask")
    dropout = arg(node, 4, "dropout_p", 0.0)
    causal = arg(node, 5, "is_causal", False)
    scale = arg(node, 6, "scale")
    if not all(isinstance(t, fx.Node) for t in (q, k, v)):
        return "q/k/v are not graph tensors"
    if not is_number(dropout) or dropout != 0:
        return f"dropout_p={dropout} (only 0 is rewritten; dropout in training stays on SDPA)"
    if not isinstance(causal, bool):
        return f"is_causal is not a constant bool ({causal!r})"
    if scale is not None and not is_number(scale):
        return f"scale is not a constant ({scale!r})"
    k0, k_chain = undo_repeat_kv(k)
    v0, v_chain = undo_repeat_kv(v)
    if bool(k_chain) != bool(v_chain):
        k0, v0, k_chain, v_chain = k, v, [], []
    reason = check_tensors(q, k0, v0, node) or check_mask(mask)
    if reason:
        return reason
    qv, kv = value(q), value(k0)
    if causal:
        if mask is not None:
            return "is_causal=True together with attn_mask"
        if not statically_equal(qv.shape[2], kv.shape[2]):
            return "is_causal=True with Sq != Sk (SDPA's top-left causal alignment)"
    if scale is None:
        scale = qv.shape[-1] ** -0.5
    return AttentionMatch(
        NAME,
        node,
        q,
        k0,
        v0,
        mask,
        float(scale),
        causal,
        chain=[node] + k_chain + v_chain,
        detail={
            "gqa": "repeat_kv undone" if k_chain else ("native" if qv.shape[1] != kv.shape[1] else "none"),
            "mask": "none" if mask is None else str(value(mask).dtype).replace("torch.", ""),
        },
    )
