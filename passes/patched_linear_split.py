"""Torch-level pass: a patched model's ptpc_linear calls -> one shared activation quant per input + GEMMs,
one GEMM per group of linears whose weights are adjacent rows of one buffer (q/k/v, gate/up after patch()).

See patterns/patched_linear.py for why. Runs after linear_rewrite (which leaves these calls alone: they
are not nn.Linear). Counts in the report: fusions["shared_activation_quant"] = quant calls saved,
fusions["shared_weight_gemm"] = GEMM calls saved (Config.fuse_projections)."""

from __future__ import annotations

import torch.fx as fx

from ..patterns import linear, patched_linear
from ..patterns.graph_utils import add_constant, erase_if_unused
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

    split, gemms_saved = 0, 0
    order = {n: i for i, n in enumerate(graph.nodes)}
    for x, calls in by_input.items():
        with graph.inserting_before(calls[0][0]):  # the first reader of x: every later one sees the quant
            xq, xs = linear.emit_quant(graph, x)
        groups = (patched_linear.shared_weight_groups(calls, gm, example_inputs) if config.fuse_projections
                  else [([c], None) for c in calls])
        for group, merged in groups:
            # the module's own fast_accum (patch) or the compile config's
            fast_accum = group[0][1][4] or config.fast_accum
            if len(group) == 1:
                node, (_, wq, ws, bias, _) = group[0]
                with graph.inserting_before(node):
                    out = linear.emit_mm(graph, x, xq, xs, wq, ws, bias, fast_accum)
                out.meta.update(node.meta)
                node.replace_all_uses_with(out)
                erase_if_unused(graph, [node])
                split += 1
                continue
            wq, ws, bias = merged
            name = f"shared_{group[0][0].name}"
            with graph.inserting_before(min((c[0] for c in group), key=order.__getitem__)):
                sources = [n for _, ops in group for n in ops[1:4]]  # the members' wq, w_scale, bias nodes
                wq_node, ws_node = (graph.get_attr(add_constant(gm, f"{name}_{what}", t, sources))
                                    for what, t in (("wq", wq), ("w_scale", ws)))
                bias_node = None if bias is None else graph.get_attr(add_constant(gm, f"{name}_bias", bias,
                                                                                  sources))
                wide = linear.emit_mm(graph, x, xq, xs, wq_node, ws_node, bias_node, fast_accum)
                outs, row = [], 0
                for _, ops in group:
                    n = patched_linear.out_features(ops)
                    outs.append(graph.call_method("narrow", (wide, -1, row, n)))
                    row += n
            # after the insertion block: the first member is its anchor, which must outlive the inserts
            for (node, _), out in zip(group, outs, strict=True):
                out.meta.update(node.meta)
                node.replace_all_uses_with(out)
                erase_if_unused(graph, [node])
            split += len(group)
            gemms_saved += len(group) - 1
    saved = split - len(by_input)
    fusions = graph_report.fusions
    if split:
        fusions["shared_activation_quant"] = fusions.get("shared_activation_quant", 0) + saved
    if gemms_saved:
        fusions["shared_weight_gemm"] = fusions.get("shared_weight_gemm", 0) + gemms_saved
    return split
