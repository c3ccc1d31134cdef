"""torch.ops.rocm_attn.flash_attention as rocm_attn.patch()'s HF attention function calls it, with a mask.

A patched model (``rocm_attn.patch``) already calls flash_attention from HF's attention interface, so
there is no SDPA call left for the other patterns to find. But that function gets the mask HF built,
and under tracing HF always builds one for a cache-less forward (it cannot rule out packed sequences):

    flash_attention(q, k, v, mask, scale, False, 0, softcap)        mask: HF's 4-D bool [B, 1, Sq, Sk]

When patterns/padding_mask.py proves that mask is HF's causal / bidirectional rule AND key padding, the
rewrite passes the flags (and key_valid) instead of the 4-D tensor, exactly as for an SDPA site: causal
block skipping and no mask read per tile. A mask it cannot prove is left where it is (the site says why).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from . import padding_mask
from .attention_common import AttentionMatch
from .graph_utils import arg, is_call, value

NAME = "patched"


def _targets():
    op = getattr(torch.ops.rocm_attn, "flash_attention", None)
    return () if op is None else (op, op.default)


def is_site(node: fx.Node) -> bool:
    """A flash_attention call that still carries a mask (one without a mask has nothing left to prove)."""
    return is_call(node, *_targets()) and isinstance(arg(node, 3, "attn_mask"), fx.Node)


def match(node: fx.Node) -> AttentionMatch | str:
    q, k, v = arg(node, 0, "q"), arg(node, 1, "k"), arg(node, 2, "v")
    mask = arg(node, 3, "attn_mask")
    scale = arg(node, 4, "scale")
    causal = arg(node, 5, "causal", False)
    window = arg(node, 6, "sliding_window", 0)
    softcap = arg(node, 7, "softcap", 0.0)
    key_valid = arg(node, 8, "key_valid")
    if causal or window or key_valid is not None:
        return "already flash_attention (patch()), flags or key_valid set next to the mask: left as called"
    if not all(isinstance(t, fx.Node) for t in (q, k, v)) or value(q) is None:
        return "q/k/v are not graph tensors with shape information"
    proof = padding_mask.recognise(mask, q, k)
    if isinstance(proof, str):
        return f"already flash_attention (patch()); 4-D mask kept: {proof}"
    return AttentionMatch(
        NAME,
        node,
        q,
        k,
        v,
        mask,
        float(scale),
        False,
        softcap=float(softcap or 0.0),
        chain=[node],
        detail={"gqa": "native", "mask": str(value(mask).dtype).replace("torch.", "")},
    )
