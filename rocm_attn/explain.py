"""Graph debugging: what the rewrite passes did to a model, and the rewritten graph itself.

    report = rocm_attn.explain(model, input_ids, attention_mask=mask)   # compiles and runs once
    print(report)            # every attention / linear site, rewritten or not and why
    ep = rocm_attn.export(model, (input_ids,), {"attention_mask": mask})  # ExportedProgram, rewritten

Both run under torch.no_grad() (the rewrites are for inference). ``options`` are Config fields,
as for torch.compile(..., options=...); ``dump_dir`` writes per-pass graphs and report.json.
"""

from __future__ import annotations

import functools
import re

import torch

from .config import Config


def explain(model, *args, options: dict | None = None, **kwargs):
    """Compile ``model`` with the rocm_attn backend, run it once on the inputs; return the Report."""
    from .backend import rocm_attn_backend
    from .passes.dump import dump_report
    from .passes.report import Report, collecting

    config = Config.from_env(**(options or {}))
    report = Report(config=config.to_dict(), fresh_compile=True)
    with torch.no_grad():
        try:
            dyn = torch._dynamo.explain(model)(*args, **kwargs)
            report.graph_breaks = dyn.graph_break_count
            report.break_reasons = [str(getattr(b, "reason", b)) for b in dyn.break_reasons]
        except Exception as e:  # the report still works without the break reasons
            report.break_reasons.append(f"torch._dynamo.explain failed: {type(e).__name__}: {e}")
        compiled = torch.compile(model, backend=functools.partial(rocm_attn_backend, options=options))
        with collecting(report):
            compiled(*args, **kwargs)
    if not report.break_reasons and len(report.graphs) > 1:
        report.graph_breaks = len(report.graphs) - 1
    dump_report(report, config.dump_dir)
    return report


def export(model, args: tuple, kwargs: dict | None = None, options: dict | None = None):
    """torch.export.ExportedProgram of ``model`` with the rewrites applied.

    The model is captured by Dynamo (one graph: fullgraph=True, static shapes), rewritten by the
    torch-level passes, its parameters/buffers turned back into module state, and exported. The
    program takes the model's tensor inputs, flattened in call order (e.g. (input_ids, attention_mask)),
    and returns Dynamo's flat tuple of output tensors, not the model's output object: for a HF causal LM
    with use_cache on, the KV cache's tensors come first and the logits last. ``ep.rocm_attn_outputs``
    names each one by its place in the model's output (e.g. "logits"; "" for a tensor that is not a leaf
    of it, such as a cache's); pass use_cache=False in kwargs for the logits alone.
    """
    from .passes.pass_manager import run_passes
    from .passes.report import GraphReport

    config = Config.from_env(**(options or {}))
    captured, graph_outputs = [], []

    def capture(gm, example_inputs):
        graph_report = GraphReport(index=len(captured))
        captured.append((run_passes(gm, example_inputs, config, graph_report), example_inputs, graph_report))

        def run(*inputs):  # keeps the graph's flat outputs, to name them below
            out = gm.forward(*inputs)
            graph_outputs.append(out)
            return out

        return run

    kwargs = kwargs or {}
    torch._dynamo.reset()
    with torch.no_grad():
        result = torch.compile(model, backend=capture, fullgraph=True, dynamic=False)(*args, **kwargs)
    torch._dynamo.reset()
    if len(captured) != 1:
        raise ValueError(f"export: Dynamo captured {len(captured)} graphs; export needs exactly one")
    gm, example_inputs, graph_report = captured[0]
    user_inputs = _state_to_attributes(gm, example_inputs)
    with torch.no_grad():
        ep = torch.export.export(gm, tuple(user_inputs), strict=False)
    ep.rocm_attn_report = graph_report
    ep.rocm_attn_outputs = _output_names(graph_outputs[0] if graph_outputs else (), result)
    return ep


def _output_names(flat, result) -> list[str]:
    """Each flat graph output's path in the model's output ("logits", "0"), found by identity (Dynamo
    rebuilds the output object around the graph's own tensors); "" where it is not a leaf of it."""
    from torch.utils import _pytree

    def name(path) -> str:  # dict keys, sequence indices and attributes, joined by dots: "logits", "0"
        return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

    leaves, _ = _pytree.tree_flatten_with_path(result)
    path_of = {id(leaf): name(path) or "output" for path, leaf in leaves if isinstance(leaf, torch.Tensor)}
    return [path_of.get(id(t), "") for t in (flat if isinstance(flat, (tuple, list)) else (flat,))]


def _state_to_attributes(gm: torch.fx.GraphModule, example_inputs) -> list:
    """Placeholders that are the model's own parameters/buffers become attributes (get_attr);
    returns the example values of the remaining (user) inputs."""
    user_inputs = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs, strict=True):
        source = getattr(node, "_dynamo_source", None) or getattr(node.meta.get("grapharg"), "source", None)
        name = getattr(source, "name", "")
        name = name() if callable(name) else str(name)
        if isinstance(value, torch.Tensor) and name.startswith("L['self']"):
            if not node.users:  # a weight the linear rewrite replaced by its fp8 copy
                gm.graph.erase_node(node)
                continue
            attr = re.sub(r"[^0-9a-zA-Z_]", "_", node.name)
            if isinstance(value, torch.nn.Parameter):
                gm.register_parameter(attr, torch.nn.Parameter(value.detach(), requires_grad=False))
            else:
                gm.register_buffer(attr, value.detach())
            with gm.graph.inserting_before(node):
                getter = gm.graph.get_attr(attr)
            node.replace_all_uses_with(getter)
            gm.graph.erase_node(node)
        else:
            user_inputs.append(value)
    gm.recompile()
    return user_inputs
