"""Post-grad (aten) fusion: SiLU(gate) * up followed by per_token_quant_fp8.

    y = silu(g) * u        (aten.silu, or its decomposition g / (1 + exp(-g)) or g * sigmoid(g),
                            in fp32 with casts for half models)
    xq, s = per_token_quant_fp8(y)
 -> xq, s = silu_mul_quant_fp8(gate_up)   when g = gate_up[..., :N] and u = gate_up[..., N:2N]
                                          (the fused gate_up projection, see fused_projections.py)
 -> xq, s = silu_mul_quant_fp8(g, u)      when g and u are two tensors of y's shape and dtype
                                          (two projections, as in a patch()-ed model)
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .post_grad_utils import (
    aten,
    call,
    insert_fused,
    prims,
    quant_users,
    redirect_quant,
    to_float32_source,
    val,
)

NAME = "silu_mul_quant"


def silu_input(s: fx.Node):
    """g when s is silu(g) in any of its forms, else None."""
    if call(s, prims.convert_element_type.default):
        s = s.args[0]
    if call(s, aten.silu.default):
        return s.args[0]
    if call(s, aten.div.Tensor):
        gf, den = s.args
        if (
            call(den, aten.add.Tensor, aten.add.Scalar)
            and den.args[1] == 1
            and call(den.args[0], aten.exp.default)
        ):
            neg = den.args[0].args[0]
            if call(neg, aten.neg.default) and neg.args[0] is gf:
                return to_float32_source(gf)
    if call(s, aten.mul.Tensor):
        for gf, sig in (s.args, tuple(reversed(s.args))):
            if call(sig, aten.sigmoid.default) and sig.args[0] is gf:
                return to_float32_source(gf)
    return None


def _half(node, start_expected):
    """(source, start, end) when node is source[..., start:end] on the last dim."""
    if not call(node, aten.slice.Tensor):
        return None
    src = node.args[0]
    sv = val(src)
    if sv is None or len(node.args) < 4:
        return None
    dim = node.args[1]
    if dim not in (-1, sv.dim() - 1):
        return None
    start, end = node.args[2], node.args[3]
    if start != start_expected:
        return None
    return src, start, min(end, sv.shape[-1]) if isinstance(end, int) else end


def apply(graph: fx.Graph) -> dict[str, int]:
    counts = {"silu_mul_quant_fp8": 0}
    if not hasattr(torch.ops.rocm_attn, "silu_mul_quant_fp8"):
        return counts
    for y in list(graph.nodes):
        if not call(y, aten.mul.Tensor):
            continue
        quants = quant_users(y)
        if quants is None:
            continue
        for s, u in (y.args, tuple(reversed(y.args))):
            g = silu_input(s) if isinstance(s, fx.Node) else None
            if g is None:
                continue
            args = _halves_of_one(g, u, val(y)) or _two_operands(g, u, val(y))
            if args is None:
                continue
            first = min(quants, key=lambda q: list(graph.nodes).index(q))
            xq, scale = insert_fused(graph, first, torch.ops.rocm_attn.silu_mul_quant_fp8.default, args, 2)
            redirect_quant(quants, xq, scale)
            counts["silu_mul_quant_fp8"] += 1
            break
    return counts


def _halves_of_one(g, u, yv):
    """(gate_up,) when g and u are gate_up[..., :N] and gate_up[..., N:2N] of y's dtype, else None."""
    gate = _half(g, 0)
    if gate is None:
        return None
    src, _, n = gate
    up = _half(u, n)
    sv = val(src)
    if up is None or up[0] is not src or up[2] != 2 * n or sv is None or sv.shape[-1] != 2 * n:
        return None
    return (src,) if yv is not None and yv.dtype == sv.dtype else None


def _two_operands(g, u, yv):
    """(g, u) when they are two tensors of y's shape and dtype (two projections), else None."""
    gv, uv = val(g), val(u) if isinstance(u, fx.Node) else None
    if yv is None or gv is None or uv is None or gv.dim() < 2:
        return None
    return (g, u) if gv.shape == uv.shape == yv.shape and gv.dtype == uv.dtype == yv.dtype else None
