"""The post-grad fusion pass Inductor runs (config_patches["post_grad_custom_post_pass"]).

A CustomGraphPass: its uuid() hashes the source of this file and of every post-grad pattern
file plus the Config, so Inductor's FX graph cache is keyed on exactly what can change the
output (a stale cache entry could otherwise replay an old fusion)."""

from __future__ import annotations

import hashlib
import inspect
import logging

import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from ..patterns import POST_GRAD_PATTERNS
from .report import current_graph

log = logging.getLogger("rocm_attn")


class PostGradFusion(CustomGraphPass):
    def __init__(self, config):
        self.config = config

    def __call__(self, graph: fx.Graph) -> None:
        counts: dict[str, int] = {}
        for pattern in POST_GRAD_PATTERNS:
            for name, n in pattern.apply(graph).items():
                counts[name] = counts.get(name, 0) + n
        if any(counts.values()):
            graph.eliminate_dead_code()
            graph.lint()
        log.debug("rocm_attn post-grad fusions: %s", counts)
        gr = current_graph()
        if gr is not None:
            for k, v in counts.items():
                gr.fusions[k] = gr.fusions.get(k, 0) + v
            gr.notes = [n for n in gr.notes if "post-grad pass did not run" not in n]

    def uuid(self) -> bytes:
        h = hashlib.sha256()
        for module in (__import__(__name__, fromlist=["x"]), *POST_GRAD_PATTERNS):
            h.update(inspect.getsource(module).encode())
        h.update(self.config.key().encode())
        return h.hexdigest()
