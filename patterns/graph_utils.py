"""Small helpers the patterns share: node metadata, module names, constants."""

from __future__ import annotations

import fnmatch
import operator
import re

import torch
import torch.fx as fx


def value(node) -> torch.Tensor | None:
    """The example (fake) tensor Dynamo recorded for a node, or None."""
    if not isinstance(node, fx.Node):
        return None
    v = node.meta.get("example_value", node.meta.get("val"))
    return v if isinstance(v, torch.Tensor) else None


def module_name(node: fx.Node) -> str:
    """Qualified name of the innermost nn.Module that made ``node`` (e.g. model.layers.0.mlp.up_proj)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['[^']*'\]\.?", "", str(path))
    # Dynamo sometimes writes submodule access as _modules['x']
    return re.sub(r"_modules\['([^']*)'\]", r"\1", path)


def skipped_by(name: str, patterns) -> str | None:
    """The first skip pattern (fnmatch or plain substring) matching a module name, else None."""
    for pat in patterns:
        if fnmatch.fnmatch(name, pat) or pat in name:
            return pat
    return None


def is_call(node, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def is_method(node, *names) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_method" and node.target in names


def arg(node: fx.Node, index: int, name: str, default=None):
    """Positional-or-keyword argument of a call node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def statically_equal(a, b) -> bool:
    """True only when two (possibly symbolic) sizes are provably equal."""
    try:
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return bool(statically_known_true(a == b))
    except Exception:
        return False


def placeholder_index(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}


def is_to_local(node: fx.Node) -> bool:
    """``dtensor.to_local()`` as Dynamo records it: a method call (torch >= 2.13), or a call of its own
    ``prim_to_local`` helper (torch 2.11: ``torch._dynamo.variables.tensor.prim_to_local``)."""
    if len(node.args) != 1 or node.kwargs:
        return False
    if node.op == "call_method":
        return node.target == "to_local"
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "prim_to_local"


def tensor_of(node, gm: fx.GraphModule, example_inputs) -> torch.Tensor | None:
    """The real tensor behind a placeholder (Dynamo lifts parameters and buffers to inputs) or a get_attr."""
    if not isinstance(node, fx.Node):
        return None
    t = None
    if node.op == "placeholder":
        idx = placeholder_index(gm).get(node)
        if idx is not None and example_inputs is not None and idx < len(example_inputs):
            t = example_inputs[idx]
    elif node.op == "get_attr":
        t = gm
        for part in str(node.target).split("."):
            t = getattr(t, part, None)
    return t if isinstance(t, torch.Tensor) else None


def parameter_of(node, gm: fx.GraphModule, example_inputs) -> torch.nn.Parameter | None:
    """The real nn.Parameter behind a placeholder or get_attr (tensor_of), or a DTensor parameter's shard."""
    if isinstance(node, fx.Node) and is_to_local(node):
        # a tensor-parallel weight (a DTensor parameter, e.g. HF tp_plan="auto"): this rank's shard,
        # so FP8 weight scales are per channel of the shard
        t = parameter_of(node.args[0], gm, example_inputs)
        return t.to_local() if t is not None and hasattr(t, "to_local") else None
    t = tensor_of(node, gm, example_inputs)
    return t if isinstance(t, torch.nn.Parameter) else None


BAKED_INPUTS = "rocm_attn_baked_inputs"  # gm.meta key: the placeholders whose values constants were made from


def add_constant(gm: fx.GraphModule, name: str, tensor: torch.Tensor, sources=()) -> str:
    """Store a tensor on the GraphModule as a buffer (a static input to Inductor, like a weight).
    sources: the nodes whose values it was computed from (a weight quantized here). Their placeholders are
    recorded in gm.meta[BAKED_INPUTS]: the backend checks on every call that those inputs are still the
    tensors it was made from, unchanged (Dynamo reuses a graph for another module's parameters)."""
    baked = gm.meta.setdefault(BAKED_INPUTS, set())
    for node in sources:
        while isinstance(node, fx.Node) and is_to_local(node):
            node = node.args[0]
        if isinstance(node, fx.Node) and node.op == "placeholder":
            baked.add(node.name)
    base = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    attr, i = base, 0
    while hasattr(gm, attr):
        i += 1
        attr = f"{base}_{i}"
    gm.register_buffer(attr, tensor, persistent=False)
    # AOT lifts a Dynamo graph's buffers to (static) inputs and wants a source for each.
    sources = getattr(gm, "_param_name_to_source", None)
    if sources is not None:
        from torch._dynamo.source import ConstantSource

        sources[attr] = ConstantSource(f"rocm_attn_constant_{attr}")
    return attr


def erase_if_unused(graph: fx.Graph, nodes) -> None:
    """Erase nodes (in the given order) that no longer have users."""
    for n in nodes:
        if not isinstance(n, fx.Node) or getattr(n, "_erased", False) or n.op == "placeholder":
            continue
        if not n.users:
            graph.erase_node(n)


GETITEM = operator.getitem
