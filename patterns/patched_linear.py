"""rocm_attn.patch()'s FP8 linears in a compiled graph: ptpc_linear(x, wq, w_scale, bias).

A patched model's q/k/v (and gate/up) projections each call ptpc_linear on the same input, and each call
quantizes that input again inside the op, where no fusion can reach it. Split into its two halves

    ptpc_linear(x, wq, ws, b)  ->  xq, xs = per_token_quant_fp8(x)              (one per distinct x)
                                   ptpc_scaled_mm(xq, xs, wq, ws, b, out_dtype=x.dtype)

the quant is shared by every linear that reads x, and the post-grad norm_quant pass can then fuse it into
the RMSNorm that produced x, as for an unpatched model (the nodes are linear.py's emit_quant / emit_mm).
The split is what the op itself runs (its providers are quant + scaled_mm), so it is exact. The weights
stay the module's buffers: no copy.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .graph_utils import arg, is_call, value

NAME = "patched_linear"


def _targets():
    op = getattr(torch.ops.rocm_attn, "ptpc_linear", None)
    return () if op is None else (op, op.default)


def is_site(node: fx.Node) -> bool:
    return is_call(node, *_targets())


def operands(node: fx.Node):
    """(x, wq, w_scale, bias, fast_accum) when every tensor has shape information, else why not."""
    x, wq, ws, bias = arg(node, 0, "x"), arg(node, 1, "wq"), arg(node, 2, "w_scale"), arg(node, 3, "bias")
    fast_accum = arg(node, 4, "fast_accum", False)
    if not all(isinstance(t, fx.Node) and value(t) is not None for t in (x, wq, ws)):
        return "ptpc_linear operands without shape information"
    if value(x).dim() < 2:
        return "ptpc_linear on a 1-D input"
    return x, wq, ws, bias, bool(fast_accum)
