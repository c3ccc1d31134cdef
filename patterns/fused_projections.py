"""Projections that read the same input (q/k/v; gate/up) -> one wider PTPC GEMM.

    q = F.linear(x, Wq); k = F.linear(x, Wk); v = F.linear(x, Wv)
 -> qkv = ptpc(x, quant(cat([Wq, Wk, Wv]))); q, k, v = qkv.narrow(-1, ...)

One activation quant and one GEMM instead of three. Per-channel weight scales make the fused
weight's quantization identical to the separate ones (each row keeps its own scale), so this is
exact; per-tensor quantization would share one scale and change numerics, so it is ptpc_fp8 only.
Gate/up fused in this order gives [gate | up], the layout silu_mul_quant_fp8 reads, so the
post-grad pass can fuse SiLU*mul + quant as well. Behind Config.fuse_projections.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.fx as fx

from .linear import LinearMatch, weight_nk

NAME = "fused_projections"


def groups(matches: list[LinearMatch]) -> list[list[LinearMatch]]:
    """Eligible linears grouped by shared input: >= 2 members, same dtype, all with or all without bias."""
    by_input: dict[fx.Node, list[LinearMatch]] = defaultdict(list)
    for m in matches:
        by_input[m.x].append(m)
    out = []
    for members in by_input.values():
        if len(members) < 2:
            continue
        if len({m.weight.dtype for m in members}) != 1 or len({m.bias is None for m in members}) != 1:
            continue
        if len({weight_nk(m).shape[1] for m in members}) != 1:
            continue
        out.append(members)
    return out


def fused_weight(members: list[LinearMatch]) -> torch.Tensor:
    return torch.cat([weight_nk(m).detach() for m in members], dim=0)


def bias_node(graph: fx.Graph, members: list[LinearMatch]) -> fx.Node | None:
    if members[0].bias is None:
        return None
    return graph.call_function(torch.cat, ([m.bias for m in members],), {"dim": 0})


def split(graph: fx.Graph, wide: fx.Node, members: list[LinearMatch]) -> list[fx.Node]:
    """One narrow() view of the wide output per member, in order."""
    outs, offset = [], 0
    for m in members:
        outs.append(graph.call_method("narrow", (wide, -1, offset, m.out_features)))
        offset += m.out_features
    return outs
