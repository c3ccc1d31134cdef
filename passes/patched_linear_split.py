"""Torch-level pass: a patched model's ptpc_linear calls -> one shared activation quant per input + GEMMs.

See patterns/patched_linear.py for why. Runs after linear_rewrite (which leaves these calls alone: they
are not nn.Linear). Counts in the report: fusions["shared_activation_quant"] = quant calls saved,
fusions["fused_projections"] = wider GEMMs made of GEMMs on one input (Config.fuse_projections)."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..patterns import linear, patched_linear
from ..patterns.graph_utils import add_constant, erase_if_unused, tensor_of
from .report import GraphReport


def run(gm: fx.GraphModule, example_inputs, config, graph_report: GraphReport) -> int:
    graph = gm.graph
    by_input: dict[fx.Node, list] = {}  # x -> [(node, operands)], in graph order
    for node in graph.nodes:
        if not patched_linear.is_site(node):
            continue
        ops = patched_linear.operands(node)
        if isinstance(ops, str):
            graph_report.notes.append(f"{node.name}: {ops}; left as ptpc_linear")
            continue
        by_input.setdefault(ops[0], []).append((node, ops))

    split, fused = 0, 0
    for x, calls in by_input.items():
        with graph.inserting_before(calls[0][0]):  # the first reader of x: every later one sees the quant
            xq, xs = linear.emit_quant(graph, x)
        runs = _runs(gm, example_inputs, calls) if config.fuse_projections else []
        in_run = {m.node for run in runs for m in run}
        for run in runs:
            _emit_wide(gm, x, xq, xs, run, config.fast_accum)
            fused += 1
        for node, (_, wq, ws, bias, fast_accum) in calls:
            if node in in_run:
                continue
            with graph.inserting_before(node):  # the module's own fast_accum (patch) or the compile config's
                out = linear.emit_mm(graph, x, xq, xs, wq, ws, bias, fast_accum or config.fast_accum)
            out.meta.update(node.meta)
            node.replace_all_uses_with(out)
            erase_if_unused(graph, [node])
        split += len(calls)
    saved = split - len(by_input)
    fusions = graph_report.fusions
    if split:
        fusions["shared_activation_quant"] = fusions.get("shared_activation_quant", 0) + saved
    if fused:
        fusions["fused_projections"] = fusions.get("fused_projections", 0) + fused
    return split


def _runs(gm, example_inputs, calls) -> list[list[patched_linear.Member]]:
    members = []
    for node, ops in calls:
        wq, ws = tensor_of(ops[1], gm, example_inputs), tensor_of(ops[2], gm, example_inputs)
        if wq is not None and ws is not None:
            members.append(patched_linear.Member(node, ops, wq, ws))
    return patched_linear.adjacent_runs(members)


def _emit_wide(gm, x, xq, xs, run, config_fast_accum: bool) -> None:
    """One GEMM over the run's storage before its first member, then a narrow() per member."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    first = min((m.node for m in run), key=order.__getitem__)
    wq, ws = patched_linear.wide_operands(run)
    _, _, _, bias, fast_accum = run[0].operands
    with graph.inserting_before(first):
        wq_node = graph.get_attr(add_constant(gm, "fused_projection_wq", wq))
        ws_node = graph.get_attr(add_constant(gm, "fused_projection_w_scale", ws))
        if bias is not None:  # small: concatenated per call
            bias = graph.call_function(torch.cat, ([m.operands[3] for m in run],), {"dim": 0})
        wide = linear.emit_mm(graph, x, xq, xs, wq_node, ws_node, bias, fast_accum or config_fast_accum)
        offset = 0
        for m in run:
            n = m.wq.shape[0]
            out = graph.call_method("narrow", (wide, -1, offset, n))
            out.meta.update(m.node.meta)
            m.node.replace_all_uses_with(out)
            offset += n
    erase_if_unused(graph, [m.node for m in run])
