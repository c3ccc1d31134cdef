"""The ``rocm_attn`` torch.compile backend.

    torch.compile(model, backend="rocm_attn", options={"quantization": "ptpc_fp8"})

Found through the ``torch_dynamo_backends`` entry point, so no import is needed. Options
are the fields of ``rocm_attn.Config``; ``mode`` is passed on to Inductor
("reduce-overhead" gives CUDA graphs).
"""

from __future__ import annotations

import logging

import torch

from .config import Config

log = logging.getLogger("rocm_attn")


def rocm_attn_backend(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None, options=None):
    config = Config.from_env(**(options or {}))
    from torch._inductor.compile_fx import compile_fx

    log.debug("rocm_attn backend: compiling a graph of %d nodes", len(gm.graph.nodes))
    inductor_patches = {"triton.cudagraphs": True} if mode == "reduce-overhead" else {}
    compiled = compile_fx(gm, example_inputs, config_patches=inductor_patches)
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
