"""The ``rocm_attn`` torch.compile backend.

    torch.compile(model, backend="rocm_attn", options={"quantization": "ptpc_fp8"})

Found through the ``torch_dynamo_backends`` entry point, so no import is needed. Options
are the fields of ``rocm_attn.Config`` (or ROCM_ATTN_* variables); ``mode`` (the argument, or an
option key where the caller cannot pass both, as HF's CompileConfig) is passed on to Inductor
("reduce-overhead" gives CUDA graphs).

Per captured graph: the torch-level rewrite passes (attention -> flash_attention, linears ->
FP8 with weights quantized once, here), then Inductor's compile_fx with our post-grad fusion
pass in config_patches (global Inductor config is never touched). The report of each compile
is in ``rocm_attn.passes.report.recent`` (``rocm_attn.explain`` collects it for you).
"""

from __future__ import annotations

import logging

import torch

from .config import Config

log = logging.getLogger("rocm_attn")


def rocm_attn_backend(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None, options=None):
    from torch._inductor.compile_fx import compile_fx

    from .passes import report as report_mod
    from .passes.dump import dump_report
    from .passes.pass_manager import run_passes
    from .passes.post_grad_fusion import PostGradFusion

    options = dict(options or {})
    # torch.compile takes mode or options, not both; HF's CompileConfig passes both: accept it here
    mode = options.pop("mode", mode)
    config = Config.from_env(**options)
    report = report_mod.active_report()
    own_report = report is None
    if own_report:
        report = report_mod.Report(config=config.to_dict())
    graph_report = report_mod.GraphReport(index=len(report.graphs))
    report.graphs.append(graph_report)
    log.debug("rocm_attn backend: graph %d, %d nodes", graph_report.index, len(gm.graph.nodes))

    with report_mod.building(graph_report):
        gm = run_passes(gm, example_inputs, config, graph_report)
        patches = {"post_grad_custom_post_pass": PostGradFusion(config)}
        if mode == "reduce-overhead":
            patches["triton.cudagraphs"] = True
        if getattr(report, "fresh_compile", False):  # explain(): run the fusion pass, not a cache hit
            patches["fx_graph_cache"] = False
        # PostGradFusion removes this note when it runs; it stays only on an FX-graph-cache hit
        graph_report.notes.append("post-grad pass did not run (FX graph cache hit): fusion counts unknown")
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
    if own_report:
        report_mod.remember(report)
    dump_report(report, config.dump_dir)
    return _with_kernels(compiled, config)


def _with_kernels(compiled, config: Config):
    """Run the compiled graph with the configured kernel provider forced (no global state)."""
    if config.kernels == "auto":
        return compiled
    from .kernels.registry import use_kernels

    def run(*args):
        with use_kernels(config.kernels):
            return compiled(*args)

    return run
