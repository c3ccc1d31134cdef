"""How rocm_attn registers its ops: `torch.ops.rocm_attn.<name>`, with little host time per call.

``torch.library.custom_op`` runs every call through two Python wrappers (an autograd kernel that
re-dispatches below autograd, and a backend wrapper that checks the outputs for aliasing). On the
H100 machine's CPU that cost most of the host time of a compiled PTPC prefill, which is host-bound:
8 Llama layers at 8 x 1024 tokens enqueue for ~29 ms and finish ~2 ms later (Session 12). So, as
vLLM's ``direct_register_custom_op`` does, the implementation goes straight onto the
CompositeExplicitAutograd key of a ``torch.library.Library`` fragment and the fake (meta)
implementation through ``torch.library.register_fake``: the same schema (inferred from the type
hints, mutated arguments marked), the same ``torch.ops.rocm_attn.<name>`` for torch.compile, FX
passes, ``opcheck`` and users.

The ops are inference ops and have no backward. Calling one on tensors that require grad works
(the forward runs); backpropagating through it raises (see ``_no_backward``).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import torch

NAMESPACE = "rocm_attn"
LIB = torch.library.Library(NAMESPACE, "FRAGMENT")  # kept alive here: a deleted Library drops its ops


class CustomOp:
    """A registered op; calling it calls ``torch.ops.rocm_attn.<name>`` (the Python function stays
    reachable as ``.impl``). ``@op.register_fake`` registers the shape-only implementation."""

    def __init__(self, name: str, fn: Callable, mutates_args: Iterable[str], tags: Iterable[torch.Tag]):
        schema = torch.library.infer_schema(fn, mutates_args=tuple(mutates_args))
        LIB.define(name + schema, tags=tuple(tags))
        LIB.impl(name, fn, "CompositeExplicitAutograd")
        self.name = name
        self.impl = fn
        self.op = getattr(getattr(torch.ops, NAMESPACE), name).default
        LIB.impl(name, _no_backward(name, self.op), "Autograd", with_keyset=True)
        functools.update_wrapper(self, fn)

    def register_fake(self, fake_fn: Callable) -> Callable:
        torch.library.register_fake(f"{NAMESPACE}::{self.name}", fake_fn, lib=LIB)
        return fake_fn

    def __call__(self, *args, **kwargs):
        return self.op(*args, **kwargs)


class _RaiseOnBackward(torch.autograd.Function):
    """Runs an op (grad is off inside) and gives its outputs a node that raises on backward."""

    @staticmethod
    def forward(ctx, name, call, *args):
        ctx.op_name = name
        return call(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"rocm_attn.{ctx.op_name} has no backward: rocm_attn's ops are for inference "
                           "(run the model under torch.no_grad() or torch.inference_mode())")


def _no_backward(name: str, op: torch._ops.OpOverload):
    """The op's Autograd kernel. With grad off (torch.no_grad, a compiled inference graph) or no input
    that requires grad it is one Python call and a C++ redispatch; otherwise the outputs get a node that
    raises on backward (these ops have no gradient formula; a silent zero gradient would be wrong)."""
    below_autograd = torch._C._after_autograd_keyset
    redispatch = op._handle.redispatch_boxed

    def autograd_kernel(keyset, *args, **kwargs):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return _RaiseOnBackward.apply(name, lambda *a: op(*a, **kwargs), *args)
        return redispatch(keyset & below_autograd, *args, **kwargs)

    return autograd_kernel


def custom_op(name: str, *, mutates_args: Iterable[str] = (), tags: Iterable[torch.Tag] = ()):
    """Decorator: ``@custom_op("ptpc_scaled_mm")`` registers ``torch.ops.rocm_attn.ptpc_scaled_mm``."""

    def deco(fn: Callable) -> CustomOp:
        return CustomOp(name, fn, mutates_args, tags)

    return deco
