"""Torch-level pass: HF attention (SDPA call or eager chain) -> torch.ops.rocm_attn.flash_attention."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..patterns import ATTENTION_PATTERNS
from ..patterns.graph_utils import erase_if_unused, module_name
from .report import GraphReport, Site


def run(gm: fx.GraphModule, example_inputs, config, graph_report: GraphReport) -> int:
    graph = gm.graph
    rewritten = 0
    for node in list(graph.nodes):
        if getattr(node, "_erased", False):  # erased with an earlier match
            continue
        pattern = next((p for p in ATTENTION_PATTERNS if p.is_site(node)), None)
        if pattern is None:
            continue
        site = Site("attention", pattern.NAME, node.name, module_name(node), False)
        graph_report.sites.append(site)
        if not config.rewrite_attention:
            site.reason = "rewrite_attention=False"
            continue
        if not hasattr(torch.ops.rocm_attn, "flash_attention"):
            site.reason = "torch.ops.rocm_attn.flash_attention is not registered"
            continue
        if hasattr(pattern, "rewrite"):  # a pattern with its own replacement (MLA)
            done = pattern.rewrite(gm, node, example_inputs)
            if isinstance(done, str):
                site.reason = done
            else:
                site.rewritten, (site.reason, site.detail) = True, done
                rewritten += 1
            continue
        m = pattern.match(node)
        if isinstance(m, str):
            site.reason = m
            continue
        with graph.inserting_before(m.anchor):
            new = graph.call_function(
                torch.ops.rocm_attn.flash_attention.default,
                (m.q, m.k, m.v, m.attn_mask, m.scale, m.causal, m.sliding_window, m.softcap),
            )
        new.meta.update(m.anchor.meta)
        m.anchor.replace_all_uses_with(new)
        erase_if_unused(graph, m.chain)
        site.rewritten = True
        site.reason = f"flash_attention(causal={m.causal}, scale={m.scale:.4g}, softcap={m.softcap:g})"
        site.detail = dict(m.detail)
        rewritten += 1
    if rewritten and config.attention_backend != "TRITON_ATTN":
        # the backends differ in how they read a paged cache; a graph's dense attention has none
        graph_report.notes.append(
            f"attention_backend={config.attention_backend} applies to paged-cache attention (patch(), "
            "RocmAttnCache, generate_batch); this graph's dense attention runs flash_attention"
        )
    return rewritten
