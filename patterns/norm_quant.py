"""Post-grad (aten) fusion: HF RMSNorm [+ residual add] followed by per_token_quant_fp8.

    h = a + b                                   (optional: the residual stream)
    hf = h.to(float32)                          (absent for fp32 models)
    y = w * (hf * rsqrt(mean(hf ** 2, -1, keepdim) + eps)).to(h.dtype)
    xq, s = per_token_quant_fp8(y)               (every user of y is such a quant)
 -> xq, s = rms_norm_quant_fp8(h, w, eps)
 or xq, s, h2 = fused_add_rms_norm_quant_fp8(a, b, w, eps), h's other users read h2.

Matched by hand on the aten graph rather than with register_replacement: the dtype casts are
present or not depending on the model dtype, and the operand order of the multiplies varies,
which would take one traced pattern per variant.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .post_grad_utils import (
    aten,
    call,
    insert_fused,
    is_last_dim,
    prims,
    quant_users,
    redirect_quant,
    to_float32_source,
    val,
)

NAME = "norm_quant"


def match_rms_norm(y: fx.Node):
    """(x, weight, eps) when y is HF's RMSNorm of x, else None."""
    if not call(y, aten.mul.Tensor):
        return None
    for w, c in (y.args, tuple(reversed(y.args))):
        if not isinstance(w, fx.Node) or not isinstance(c, fx.Node):
            continue
        cast = c if call(c, prims.convert_element_type.default) else None
        z = c.args[0] if cast is not None else c
        if not call(z, aten.mul.Tensor):
            continue
        for xf, r in (z.args, tuple(reversed(z.args))):
            if not call(r, aten.rsqrt.default):
                continue
            add = r.args[0]
            if not (call(add, aten.add.Tensor, aten.add.Scalar) and isinstance(add.args[1], (int, float))):
                continue
            mean = add.args[0]
            if not (
                call(mean, aten.mean.dim)
                and is_last_dim(mean.args[1], xf)
                and (len(mean.args) > 2 and mean.args[2] or mean.kwargs.get("keepdim"))
            ):
                continue
            pw = mean.args[0]
            if not (call(pw, aten.pow.Tensor_Scalar) and pw.args[0] is xf and pw.args[1] == 2):
                continue
            x = to_float32_source(xf)
            xv, wv, fv = val(x), val(w), val(xf)
            if xv is None or wv is None or fv is None or fv.dtype != torch.float32:
                continue
            if wv.dim() != 1 or wv.shape[0] != xv.shape[-1] or wv.dtype != xv.dtype:
                continue
            if (cast is None) != (xv.dtype == torch.float32) or (
                cast is not None and cast.args[1] != xv.dtype
            ):
                continue
            return x, w, float(add.args[1])
    return None


def _residual_add(x: fx.Node, chain_users: set, before: fx.Node):
    """(a, b) when x = a + b of equal shapes/dtypes whose other users all come after ``before``."""
    if not (call(x, aten.add.Tensor) and len(x.args) == 2 and all(isinstance(a, fx.Node) for a in x.args)):
        return None
    a, b = x.args
    va, vb, vx = val(a), val(b), val(x)
    if va is None or vb is None or vx is None or va.shape != vx.shape or vb.shape != vx.shape:
        return None
    if va.dtype != vx.dtype or vb.dtype != vx.dtype or x.kwargs.get("alpha", 1) != 1:
        return None
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    if any(order[u] < order[before] for u in x.users if u not in chain_users):
        return None
    return a, b


def apply(graph: fx.Graph) -> dict[str, int]:
    counts = {"rms_norm_quant_fp8": 0, "fused_add_rms_norm_quant_fp8": 0}
    if not hasattr(torch.ops.rocm_attn, "rms_norm_quant_fp8"):
        return counts
    for y in list(graph.nodes):
        if getattr(y, "_erased", False) or not call(y, aten.mul.Tensor):
            continue
        quants = quant_users(y)
        if quants is None:
            continue
        m = match_rms_norm(y)
        if m is None:
            continue
        x, w, eps = m
        first = min(quants, key=lambda n: list(graph.nodes).index(n))
        chain_users = {u for u in x.users if _in_chain(u, y)}
        ab = _residual_add(x, chain_users, first)
        if ab is not None:
            xq, scale, h2 = insert_fused(
                graph,
                first,
                torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8.default,
                (ab[0], ab[1], w, eps),
                3,
            )
            redirect_quant(quants, xq, scale)
            for u in list(x.users):
                if u not in chain_users:
                    u.replace_input_with(x, h2)
            counts["fused_add_rms_norm_quant_fp8"] += 1
        else:
            xq, scale = insert_fused(
                graph, first, torch.ops.rocm_attn.rms_norm_quant_fp8.default, (x, w, eps), 2
            )
            redirect_quant(quants, xq, scale)
            counts["rms_norm_quant_fp8"] += 1
    return counts


def _in_chain(node: fx.Node, y: fx.Node, depth: int = 8) -> bool:
    """True when y is reachable from node through its users within a few steps (the norm chain)."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if n is y:
                return True
            nxt.extend(n.users)
        frontier = nxt
    return any(n is y for n in frontier)
