"""Torch-level pass: linears on parameters -> FP8 (weights quantized here, once, held as constants).

Projections sharing one input are first fused into one wider GEMM when Config.fuse_projections
(ptpc_fp8 only, see patterns/fused_projections.py); the rest are rewritten one by one.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..patterns import fused_projections, linear
from ..patterns.graph_utils import (add_constant, erase_if_unused, module_name, parameter_of, placeholder_index,
                                    skipped_by, value)
from .report import GraphReport, Site


def run(gm: fx.GraphModule, example_inputs, config, graph_report: GraphReport) -> int:
    graph = gm.graph
    eligible: list[tuple[linear.LinearMatch, Site]] = []
    for node in list(graph.nodes):
        if not linear.is_site(node):
            continue
        m = linear.match(node, gm, example_inputs)
        if m is None:
            continue
        site = Site(
            "linear",
            m.pattern if not isinstance(m, str) else _pattern_name(node),
            node.name,
            m.module if not isinstance(m, str) else "",
            False,
        )
        graph_report.sites.append(site)
        if isinstance(m, str):
            site.module, site.reason = module_name(node), m
            continue
        site.detail = {"shape": [m.out_features, linear.weight_nk(m).shape[1]], "bias": m.bias is not None}
        pat = skipped_by(m.module, config.skip_modules)
        if pat is not None:
            site.reason = f"skipped by config (skip_modules pattern {pat!r})"
        elif config.quantization == "none":
            site.reason = "quantization='none'"
        elif linear.is_moe_router(m.anchor):
            site.reason = f"MoE router (its output selects experts): kept {value(m.x).dtype}, as vLLM keeps routers"
        else:
            eligible.append((m, site))

    graph_report.sites.extend(_stacked_weight_sites(gm, example_inputs))

    cache: dict = {}  # (id(weight), transposed) -> (wq, w_scale): a tied weight is quantized once
    memory = {"original_bytes": 0, "bf16_bytes": 0, "fp8_bytes": 0}

    def quantized(m: linear.LinearMatch):
        key = (id(m.weight), m.transposed)
        if key not in cache:
            cache[key] = linear.quantize(linear.weight_nk(m), config.quantization)
            for k, v in linear.weight_bytes(m.weight, *cache[key]).items():
                memory[k] += v
        return cache[key]

    rewritten, fused_groups = 0, 0
    replaced: dict[fx.Node, fx.Node] = {}  # anchor -> its new output (a later linear may read it)
    site_of = {id(m): s for m, s in eligible}
    done: set[int] = set()
    if config.fuse_projections and config.quantization == "ptpc_fp8":
        for members in fused_projections.groups([m for m, _ in eligible]):
            first = min((m.anchor for m in members), key=_order(graph))
            w = fused_projections.fused_weight(members)
            wq, ws = linear.quantize(w, config.quantization)
            for k, v in linear.weight_bytes(w, wq, ws).items():
                memory[k] += v
            with graph.inserting_before(first):
                bias = _fused_bias(graph, gm, example_inputs, members)
                wide = linear.emit(
                    graph,
                    gm,
                    replaced.get(members[0].x, members[0].x),
                    wq,
                    ws,
                    bias,
                    config.quantization,
                    f"fused_{members[0].module or members[0].anchor.name}",
                    config.fast_accum,
                    sources=[m.weight_node for m in members],
                )
                outs = fused_projections.split(graph, wide, members)
            names = [m.module.rsplit(".", 1)[-1] or m.anchor.name for m in members]
            for m, out in zip(members, outs, strict=True):
                _replace(graph, m, out)
                replaced[m.anchor] = out
                s = site_of[id(m)]
                s.rewritten, s.reason = True, f"{config.quantization}, fused [{'|'.join(names)}]"
                done.add(id(m))
                rewritten += 1
            fused_groups += 1
    for m, site in eligible:
        if id(m) in done:
            continue
        wq, ws = quantized(m)
        with graph.inserting_before(m.anchor):
            out = linear.emit(
                graph,
                gm,
                replaced.get(m.x, m.x),
                wq,
                ws,
                replaced.get(m.bias, m.bias),
                config.quantization,
                m.module or m.anchor.name,
                config.fast_accum,
                sources=[m.weight_node],
            )
        _replace(graph, m, out)
        replaced[m.anchor] = out
        site.rewritten, site.reason = True, config.quantization
        rewritten += 1
    if rewritten:
        for k, v in memory.items():
            graph_report.memory[k] = graph_report.memory.get(k, 0) + v
    graph_report.fusions["fused_projections"] = (
        graph_report.fusions.get("fused_projections", 0) + fused_groups
    )
    return rewritten


def _stacked_weight_sites(gm: fx.GraphModule, example_inputs) -> list[Site]:
    """A report line for each parameter of 3+ dims the graph multiplies with (transformers 5's fused MoE
    experts: [experts, N, K], most of an MoE model's weights): no pattern rewrites them, and the report must
    not read as if the model were covered. Convolution weights are not GEMM weights here: left out."""
    sites = []
    for node, idx in placeholder_index(gm).items():
        t = example_inputs[idx] if example_inputs is not None and idx < len(example_inputs) else None
        if not isinstance(t, torch.nn.Parameter) or t.dim() < 3 or not t.is_floating_point() or not node.users:
            continue
        if any("conv" in str(getattr(u.target, "__name__", u.target)) for u in node.users):
            continue
        user = next(iter(node.users))
        site = Site("linear", "stacked", node.name, module_name(user), False)
        site.reason = f"a {t.dim()}-D weight {tuple(t.shape)} (fused MoE experts?): no rewrite, kept unquantized"
        sites.append(site)
    return sites


def _replace(graph: fx.Graph, m: linear.LinearMatch, out: fx.Node) -> None:
    for key in ("nn_module_stack", "example_value"):  # later matches read the output's shape/dtype
        if key in m.anchor.meta:
            out.meta.setdefault(key, m.anchor.meta[key])
    m.anchor.replace_all_uses_with(out)
    erase_if_unused(graph, [m.anchor] + m.dead)


def _fused_bias(graph, gm, example_inputs, members):
    if members[0].bias is None:
        return None
    params = [parameter_of(m.bias, gm, example_inputs) for m in members]
    if all(p is not None for p in params):  # concatenated once, here
        return graph.get_attr(add_constant(gm, "fused_bias", torch.cat([p.detach() for p in params]),
                                           [m.bias for m in members]))
    return graph.call_function(torch.cat, ([m.bias for m in members],), {"dim": 0})


def _order(graph: fx.Graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: index[n]


def _pattern_name(node: fx.Node) -> str:
    return {"linear": "linear", "addmm": "addmm"}.get(getattr(node.target, "__name__", ""), "mm")
