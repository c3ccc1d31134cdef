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

import copy
import logging
import operator
import warnings
import weakref

import torch

from .config import Config

log = logging.getLogger("rocm_attn")


def rocm_attn_backend(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None, options=None):
    options = dict(options or {})
    # torch.compile takes mode or options, not both; HF's CompileConfig passes both: accept it here
    mode = options.pop("mode", mode)
    config = Config.from_env(**options)
    original = copy.deepcopy(gm)  # the passes change gm; new weights compile this again (_RecompileOnNewWeights)
    compiled, baked = _compile(gm, example_inputs, mode, config)
    if not baked:
        return compiled
    return _RecompileOnNewWeights(original, example_inputs, mode, config, baked, compiled)


def _compile(gm: torch.fx.GraphModule, example_inputs, mode: str | None, config: Config):
    """The passes and Inductor on one graph -> (the compiled callable, the positions of the inputs whose
    values the passes baked into constants: the weights they quantized)."""
    from torch._inductor.compile_fx import compile_fx

    from .passes import report as report_mod
    from .passes.dump import dump_report
    from .passes.pass_manager import run_passes
    from .passes.post_grad_fusion import PostGradFusion
    from .patterns.graph_utils import BAKED_INPUTS, placeholder_index

    report = report_mod.active_report()
    own_report = report is None
    if own_report:
        # with a dump_dir, the graphs of one process share its report: graph_0, graph_1, ... and one
        # report.json listing them all (each graph used to be graph_0 and overwrite the last one's report)
        report = _DUMP_REPORTS.get(config.dump_dir) if config.dump_dir else None
        if report is None:
            report = report_mod.Report(config=config.to_dict())
            if config.dump_dir:
                _DUMP_REPORTS[config.dump_dir] = report
    graph_report = report_mod.GraphReport(index=len(report.graphs))
    report.graphs.append(graph_report)
    log.debug("rocm_attn backend: graph %d, %d nodes", graph_report.index, len(gm.graph.nodes))

    with report_mod.building(graph_report):
        gm = run_passes(gm, example_inputs, config, graph_report)
        baked_names = gm.meta.get(BAKED_INPUTS, set())
        baked = sorted(i for n, i in placeholder_index(gm).items() if n.name in baked_names)
        patches = {"post_grad_custom_post_pass": PostGradFusion(config)}
        if mode == "reduce-overhead":
            patches["triton.cudagraphs"] = True
        if getattr(report, "fresh_compile", False):  # explain(): run the fusion pass, not a cache hit
            patches["fx_graph_cache"] = False
        # PostGradFusion removes this note when it runs; it stays only on an FX-graph-cache hit
        graph_report.notes.append("post-grad pass did not run (FX graph cache hit): fusion counts unknown")
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
    if own_report and not any(r is report for r in report_mod.recent):  # by identity: Report is a dataclass
        report_mod.remember(report)
    dump_report(report, config.dump_dir)
    return _with_kernels(compiled, config), baked


_DUMP_REPORTS: dict[str, object] = {}  # dump_dir -> the Report its torch.compile graphs go into (this process)


class _RecompileOnNewWeights:
    """A compiled graph whose FP8 weights (and other constants made from parameters) were computed at compile
    time from the parameters it was given. Dynamo calls one compiled graph with whatever parameters reach it:
    another instance of the same module class (each decoder layer compiled on its own, one compiled function
    applied to two models), or the same ones updated in place (load_state_dict). So every call checks that
    those inputs are the very tensors, at the same version, the constants were made from, and compiles the
    graph again for new ones (kept: each set of weights compiles once).

    The check costs ~0.1-0.2 us per input, so it reads one input per underlying tensor: views of one buffer
    (patch()'s q/k/v weights are rows of one) share its version counter, and another module has other buffers.
    """

    def __init__(self, original, example_inputs, mode, config, baked, compiled):
        self.original, self.mode, self.config = original, mode, config
        bases, self.checked = set(), []
        for i in baked:
            t = example_inputs[i]
            base = t._base if t._base is not None else t
            if id(base) not in bases:
                bases.add(id(base))
                self.checked.append(i)
        self.select = operator.itemgetter(*self.checked, *self.checked[:1])  # always a tuple (>= 2 items)
        self.variants = [(self._stamp(example_inputs), compiled)]

    def _stamp(self, args):
        tensors = self.select(args)
        # inference tensors have no version counter (and cannot change outside inference mode)
        versions = None if any(t.is_inference() for t in tensors) else list(map(_VERSION, tensors))
        return [weakref.ref(t) for t in tensors], versions

    def __call__(self, *args):
        tensors = self.select(args)
        for (refs, versions), compiled in self.variants:
            if all(map(operator.is_, map(_DEREF, refs), tensors)) and (
                    versions is None or list(map(_VERSION, tensors)) == versions):
                return compiled(*args)
        # variants whose tensors died or changed in place since can never match again
        self.variants = [(stamp, c) for stamp, c in self.variants if _current(stamp)]
        warnings.warn("rocm_attn: a compiled graph was called with other weights than it quantized (another "
                      "module's parameters, or updated in place); compiling it again for these weights",
                      stacklevel=2)
        compiled, _ = _compile(copy.deepcopy(self.original), list(args), self.mode, self.config)
        self.variants.insert(0, (self._stamp(args), compiled))
        return compiled(*args)


_DEREF = weakref.ref.__call__
_VERSION = operator.attrgetter("_version")


def _current(stamp) -> bool:
    refs, versions = stamp
    tensors = [ref() for ref in refs]
    return all(t is not None for t in tensors) and (versions is None or list(map(_VERSION, tensors)) == versions)


def _with_kernels(compiled, config: Config):
    """Run the compiled graph with the configured kernel provider forced (no global state)."""
    if config.kernels == "auto":
        return compiled
    from .kernels.registry import use_kernels

    def run(*args):
        with use_kernels(config.kernels):
            return compiled(*args)

    return run
