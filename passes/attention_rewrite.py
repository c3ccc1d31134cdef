"""Torch-level pass: HF attention (SDPA call or eager chain) -> torch.ops.rocm_attn.flash_attention.

A mask that patterns/padding_mask.py proves to be HF's causal / bidirectional mask AND key padding
from the 2-D attention_mask becomes flash_attention's key_valid [B, Sk] vector plus causal /
sliding_window flags; any other mask is passed as the 4-D tensor HF built (the report says which)."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..patterns import ATTENTION_PATTERNS, padding_mask
from ..patterns.graph_utils import erase_if_unused, module_name
from .report import GraphReport, Site


def run(gm: fx.GraphModule, example_inputs, config, graph_report: GraphReport) -> int:
    graph = gm.graph
    rewritten = 0
    key_valid_of = {}  # HF's padding gather [B,1,1,Sk] -> its [B, Sk] view, one per graph
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
        attn_mask, causal, window, key_valid = m.attn_mask, m.causal, m.sliding_window, None
        mask_note = "none"
        if m.attn_mask is not None:
            # the patterns set no causal / window flag next to a mask; the proof replaces both
            padding = padding_mask.recognise(m.attn_mask, m.q, m.k)
            if isinstance(padding, str) or m.causal or m.sliding_window:
                why = padding if isinstance(padding, str) else "flags set by the pattern"
                mask_note = f"4-D {m.detail.get('mask', '')} tensor ({why})"
            else:
                attn_mask, causal, window = None, padding.causal, padding.sliding_window
                if padding.key_valid is not None:
                    key_valid = _key_valid(graph, padding.key_valid, key_valid_of)
                mask_note = padding.describe()
        with graph.inserting_before(m.anchor):
            new = graph.call_function(
                torch.ops.rocm_attn.flash_attention.default,
                (m.q, m.k, m.v, attn_mask, m.scale, causal, window, m.softcap, key_valid),
            )
        new.meta.update(m.anchor.meta)
        m.anchor.replace_all_uses_with(new)
        erase_if_unused(graph, m.chain)
        site.rewritten = True
        site.reason = (f"flash_attention(causal={causal}, scale={m.scale:.4g}, softcap={m.softcap:g}); "
                       f"mask: {mask_note}")
        site.detail = dict(m.detail, mask=mask_note)
        rewritten += 1
    if rewritten and config.attention_backend != "TRITON_ATTN":
        # the backends differ in how they read a paged cache; a graph's dense attention has none
        graph_report.notes.append(
            f"attention_backend={config.attention_backend} applies to paged-cache attention (patch(), "
            "RocmAttnCache, generate_batch); this graph's dense attention runs flash_attention"
        )
    return rewritten


def _key_valid(graph: fx.Graph, gather: fx.Node, cache: dict) -> fx.Node:
    """HF's pm[b_idx, kv_idx] ([B,1,1,Sk] bool) as the [B, Sk] key_valid vector: one view per graph."""
    if gather not in cache:
        with graph.inserting_after(gather):
            flat = graph.call_method("flatten", (gather, 1))
        gv = gather.meta.get("example_value")
        if gv is not None:
            flat.meta["example_value"] = gv.flatten(1)
        cache[gather] = flat
    return cache[gather]
