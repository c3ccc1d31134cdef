"""Runs the torch-level rewrite passes in a fixed order, with a match count per pass and
before/after dumps. A pass that raises leaves the graph as it was before that pass (a warning
and a report line); with Config.strict it re-raises."""

from __future__ import annotations

import copy
import logging
import time
import warnings

import torch.fx as fx

from . import attention_rewrite, linear_rewrite, patched_linear_split, rope_tables
from .dump import dump_graph
from .report import GraphReport, PassRecord

log = logging.getLogger("rocm_attn")

# (name, run(gm, example_inputs, config, graph_report) -> matches), in order. Attention first:
# its matches read Dynamo's shape metadata, which the linear rewrite's new nodes do not carry.
PASSES = [
    ("attention_rewrite", attention_rewrite.run),
    ("linear_rewrite", linear_rewrite.run),
    ("patched_linear_split", patched_linear_split.run),  # patch()'s FP8 linears: share the activation quant
    ("rope_tables", rope_tables.run),  # RoPE's cos / sin stored once, not recomputed in every layer's kernel
]


def run_passes(gm: fx.GraphModule, example_inputs, config, graph_report: GraphReport) -> fx.GraphModule:
    graph_report.nodes_before = len(gm.graph.nodes)
    dump_graph(gm, config.dump_dir, graph_report.index, 0, "captured")
    for step, (name, fn) in enumerate(PASSES, 1):
        record = PassRecord(name)
        graph_report.passes.append(record)
        saved_graph, saved_sites = copy.deepcopy(gm.graph), len(graph_report.sites)
        saved_fusions, saved_memory = dict(graph_report.fusions), dict(graph_report.memory)
        start = time.perf_counter()
        try:
            record.matches = fn(gm, example_inputs, config, graph_report)
            gm.graph.lint()
            gm.recompile()
        except Exception as e:
            if config.strict:
                raise
            record.error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"rocm_attn: pass {name} failed on graph {graph_report.index}; "
                f"compiling that graph without it ({record.error})",
                stacklevel=2,
            )
            _restore(gm, saved_graph)
            del graph_report.sites[saved_sites:]
            graph_report.fusions, graph_report.memory = saved_fusions, saved_memory
        record.seconds = time.perf_counter() - start
        log.debug("rocm_attn: graph %d pass %s: %d match(es)", graph_report.index, name, record.matches)
        dump_graph(gm, config.dump_dir, graph_report.index, step, name)
    graph_report.nodes_after = len(gm.graph.nodes)
    return gm


def _restore(gm: fx.GraphModule, saved_graph: fx.Graph) -> None:
    """Put the pre-pass graph back, keeping the placeholder attributes Dynamo set (AOT reads them)."""
    sources = {
        n.name: n._dynamo_source
        for n in gm.graph.nodes
        if n.op == "placeholder" and hasattr(n, "_dynamo_source")
    }
    for n in saved_graph.nodes:
        if n.op == "placeholder" and n.name in sources:
            n._dynamo_source = sources[n.name]
    gm.graph = saved_graph
    gm.recompile()
