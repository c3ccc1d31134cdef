"""Torch-level pass: a patched model's ptpc_linear calls -> one shared activation quant per input + GEMMs.

See patterns/patched_linear.py for why. Runs after linear_rewrite (which leaves these calls alone: they
are not nn.Linear). Counts in the report: fusions["shared_activation_quant"] = quant calls saved."""

from __future__ import annotations

import torch.fx as fx

from ..patterns import linear, patched_linear
from ..patterns.graph_utils import erase_if_unused
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

    split = 0
    for x, calls in by_input.items():
        with graph.inserting_before(calls[0][0]):  # the first reader of x: every later one sees the quant
            xq, xs = linear.emit_quant(graph, x)
        for node, (_, wq, ws, bias, fast_accum) in calls:
            with graph.inserting_before(node):  # the module's own fast_accum (patch) or the compile config's
                out = linear.emit_mm(graph, x, xq, xs, wq, ws, bias, fast_accum or config.fast_accum)
            out.meta.update(node.meta)
            node.replace_all_uses_with(out)
            erase_if_unused(graph, [node])
            split += 1
    saved = split - len(by_input)
    if split:
        fusions = graph_report.fusions
        fusions["shared_activation_quant"] = fusions.get("shared_activation_quant", 0) + saved
    return split
