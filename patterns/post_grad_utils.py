"""Helpers for the aten-level (post-grad) patterns: matching aten calls, fake values for new nodes."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

aten = torch.ops.aten
prims = torch.ops.prims


def val(node):
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def call(node, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def to_float32_source(node):
    """x when node is convert_element_type(x, float32), else node itself."""
    if call(node, prims.convert_element_type.default) and node.args[1] == torch.float32:
        return node.args[0]
    return node


def is_last_dim(dims, node) -> bool:
    v = val(node)
    nd = v.dim() if v is not None else None
    return list(dims) in ([-1],) or (nd is not None and list(dims) == [nd - 1])


def quant_users(y: fx.Node) -> list[fx.Node] | None:
    """All users of y when every one is per_token_quant_fp8, else None (y is needed unquantized)."""
    users = list(y.users)
    if users and all(call(u, torch.ops.rocm_attn.per_token_quant_fp8.default) for u in users):
        return users
    return None


def insert_fused(graph: fx.Graph, before: fx.Node, op, args: tuple, n_out: int) -> list[fx.Node]:
    """Insert op(*args) before ``before``; returns getitem nodes for its outputs, with fake values."""
    with graph.inserting_before(before):
        fused = graph.call_function(op, args)
        outs = [graph.call_function(operator.getitem, (fused, i)) for i in range(n_out)]
    fakes = [val(a) for a in args if isinstance(a, fx.Node)]
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode(fakes)
    if mode is not None:
        with mode:
            res = op(*[val(a) if isinstance(a, fx.Node) else a for a in args])
        fused.meta["val"] = res
        for i, o in enumerate(outs):
            o.meta["val"] = res[i]
    return outs


def redirect_quant(quants: list[fx.Node], xq: fx.Node, scale: fx.Node) -> None:
    """Point each per_token_quant_fp8 node's getitem users at the fused op's outputs."""
    for q in quants:
        for u in list(q.users):
            if call(u, operator.getitem):
                u.replace_all_uses_with(xq if u.args[1] == 0 else scale)
