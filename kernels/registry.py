"""Which implementation ("provider") runs each op.

Every op has a ``torch`` provider (the reference and the oracle for tests, runs anywhere),
usually a ``triton`` provider (any GPU; CPU under TRITON_INTERPRET=1) and sometimes an
``aiter`` provider (ROCm with AITER importable).

The choice, in order:
1. ``use_kernels("triton")`` context manager (the compiled-model wrapper enters it with the
   user's config), else
2. the ``ROCM_ATTN_KERNELS`` environment variable (``torch`` | ``triton`` | ``aiter`` | ``auto``),
   else
3. ``auto``: each op ranks its providers for the given inputs; the first that can run wins.

A forced provider that cannot run raises ``ProviderUnavailableError`` saying why: it never
silently runs something else.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .platform import get_platform, triton_interpret


class Kernels(str, enum.Enum):
    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"
    AITER = "aiter"


ENV_VAR = "ROCM_ATTN_KERNELS"
_forced: contextvars.ContextVar[Kernels | None] = contextvars.ContextVar("rocm_attn_kernels", default=None)


class ProviderUnavailableError(RuntimeError):
    """A provider was asked for explicitly but cannot run these inputs here."""


def parse_kernels(value: str | Kernels | None) -> Kernels:
    if value is None or value == "":
        return Kernels.AUTO
    try:
        return Kernels(str(getattr(value, "value", value)).lower())
    except ValueError:
        names = ", ".join(k.value for k in Kernels)
        raise ValueError(f"unknown kernel provider {value!r}; expected one of: {names}") from None


@contextlib.contextmanager
def use_kernels(kernels: str | Kernels | None) -> Iterator[None]:
    """Force a provider for every op called inside the block (``None``/"auto": the default)."""
    token = _forced.set(parse_kernels(kernels) if kernels is not None else None)
    try:
        yield
    finally:
        _forced.reset(token)


def requested_kernels() -> Kernels:
    forced = _forced.get()
    if forced is not None:
        return forced
    return _parse_env_value(os.environ.get(ENV_VAR))


@functools.lru_cache(maxsize=16)
def _parse_env_value(value: str | None) -> Kernels:
    """parse_kernels of the variable's text, kept: every op call asks (a bad value raises each time)."""
    return parse_kernels(value)


def provider_can_run(provider: str, device: torch.device) -> str | None:
    """None if ``provider`` can run on ``device`` here, else the reason it cannot."""
    plat = get_platform()
    if provider == "torch":
        return None
    if provider == "triton":
        if device.type == "cpu":
            if not triton_interpret():
                return "Triton needs a GPU tensor (or TRITON_INTERPRET=1 for CPU tensors)"
            return None if _triton_installed() else "the triton package is not installed"
        return None if plat.triton_available else plat.triton_reason
    if provider == "aiter":
        if device.type != "cuda":
            return "AITER runs on ROCm GPU tensors only"
        return None if plat.aiter_available else plat.aiter_reason
    return f"unknown provider {provider!r}"


def _triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# A support check gets the op's arguments and returns None (can run) or a reason.
SupportCheck = Callable[..., "str | None"]


@dataclass
class OpProviders:
    name: str
    # provider name -> implementation (same signature as the op)
    impls: dict[str, Callable] = field(default_factory=dict)
    # provider name -> shape/dtype check beyond "can this provider run on this device"
    supports: dict[str, SupportCheck] = field(default_factory=dict)
    # ranks providers for "auto" given the op's arguments; default: aiter, triton, torch
    # on GPU and torch on CPU
    auto_order: Callable[..., list[str]] | None = None
    # providers whose kernels compute wrongly on bf16 under the Triton interpreter (a bf16 tl.dot)
    no_interpreter_bf16: set[str] = field(default_factory=set)


_OPS: dict[str, OpProviders] = {}


def op_providers(name: str) -> OpProviders:
    return _OPS.setdefault(name, OpProviders(name))


def register_provider(op: str, provider: str, supports: SupportCheck | None = None, bf16_dot: bool = False):
    """Decorator: ``@register_provider("per_token_quant_fp8", "triton", supports=...)``. ``bf16_dot``: the
    Triton kernels take a tl.dot of bf16 operands, which the interpreter computes wrongly (REFERENCE.md), so
    a forced triton on CPU bf16 tensors is refused there rather than returning garbage."""
    parse_kernels(provider)

    def deco(fn):
        entry = op_providers(op)
        entry.impls[provider] = fn
        if supports is not None:
            entry.supports[provider] = supports
        if bf16_dot:
            entry.no_interpreter_bf16.add(provider)
        return fn

    return deco


def set_auto_order(op: str, fn: Callable[..., list[str]]) -> None:
    op_providers(op).auto_order = fn


def _default_order(device: torch.device) -> list[str]:
    return ["aiter", "triton", "torch"] if device.type == "cuda" else ["torch"]


def why_not(op: str, provider: str, device: torch.device, *args, **kwargs) -> str | None:
    entry = _OPS.get(op)
    if entry is None or provider not in entry.impls:
        return f"op {op!r} has no {provider!r} provider"
    reason = provider_can_run(provider, device)
    if (reason is None and provider in entry.no_interpreter_bf16 and device.type == "cpu"
            and _holds_bf16(args, kwargs)):
        reason = ("the Triton interpreter (TRITON_INTERPRET=1) computes this op's bf16 tl.dot wrongly: use fp16 / "
                  "fp32 tensors, the torch provider, or a GPU")
    # without arguments (e.g. `rocm-attn env`) only the device-level check applies
    if reason is None and provider in entry.supports and (args or kwargs):
        reason = entry.supports[provider](*args, **kwargs)
    return reason


def _holds_bf16(args, kwargs) -> bool:
    values = [*args, *kwargs.values()]
    values += [t for v in values if isinstance(v, (list, tuple)) for t in v]
    return any(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in values)


def select(op: str, device: torch.device, *args, **kwargs) -> tuple[str, Callable]:
    """Pick the provider for one call of ``op``; returns (provider name, implementation)."""
    entry = _OPS[op]
    wanted = requested_kernels()
    if wanted is not Kernels.AUTO:
        reason = why_not(op, wanted.value, device, *args, **kwargs)
        if reason is not None:
            raise ProviderUnavailableError(
                f"rocm_attn.{op}: kernel provider {wanted.value!r} was requested "
                f"(use_kernels() or {ENV_VAR}) but cannot run: {reason}"
            )
        return wanted.value, entry.impls[wanted.value]
    order = entry.auto_order(*args, **kwargs) if entry.auto_order else _default_order(device)
    for name in order + ["torch"]:
        if name in entry.impls and why_not(op, name, device, *args, **kwargs) is None:
            return name, entry.impls[name]
    raise ProviderUnavailableError(f"rocm_attn.{op}: no provider can run these inputs")


def dispatch(op: str, device: torch.device, *args, **kwargs):
    """Run ``op`` with the selected provider."""
    _, fn = select(op, device, *args, **kwargs)
    return fn(*args, **kwargs)


def registered_ops() -> dict[str, OpProviders]:
    return dict(_OPS)
