"""Launch a kernel's compiled specialization directly once it has been compiled.

Why: Triton's JIT launch (argument binding, specialization, cache lookup) costs tens of microseconds of
host time per call. For a decode kernel that runs ~20-150 us on the GPU that is the whole budget of an eager
or non-CUDA-graph caller (H100, Session 15: an eager `mla_decode` call spent ~180 us on the host, a third of
it in the JIT path). After the first call of a specialization we keep Triton's CompiledKernel and call it.

The key is derived from the call itself (`arg_traits`): for each argument what the JIT specializes on
(a tensor's dtype and 16-byte alignment, an int's == 1 / divisibility by 16 / width, a tensor
descriptor's type), plus the constexprs and the launch options. Launchers pass their arguments and nothing
else, so none can leave a specialization out of its key.
"""

from __future__ import annotations

import torch


def cdiv(a: int, b: int) -> int:
    """triton.cdiv for a launcher's hot path: Triton's is a constexpr function whose wrapper costs ~5 us of
    host time per Python call (Triton 3.6)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2 without its constexpr-function wrapper (see cdiv)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def arg_traits(arg) -> object:
    """What Triton's JIT specializes a kernel argument on (checked against Triton's own specialization in
    tests/kernels/test_launch_cache.py)."""
    kind = type(arg)
    if kind is int:  # the common case first: this runs for every argument of every call
        return arg == 1, arg % 16 == 0, arg >= 2**31
    if kind is float or kind is bool:  # fp32 and u1 arguments, not specialized on their values
        return kind
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, int):  # an int subclass (not bool: caught above)
        return arg == 1, arg % 16 == 0, arg >= 2**31
    if hasattr(arg, "block_shape"):  # a host tensor descriptor: its type (dtype, block, layout) counts
        return kind, arg.base.dtype, tuple(arg.block_shape), getattr(arg, "layout", None)
    raise TypeError(f"launch_cache: no specialization traits for a {kind.__name__} argument")


def launch(cache: dict, kernel, grid: tuple, args: tuple, constexprs: dict, **options) -> None:
    """kernel[grid](*args, **constexprs, **options) through the JIT the first time this specialization is
    met; after that the kept compiled kernel is launched directly (it takes the constexprs positionally,
    after args, in the kernel's order, and a 3-d grid). `cache` is the caller's dict for this kernel."""
    device = next(a.device.index for a in args if isinstance(a, torch.Tensor))
    key = (device, *map(arg_traits, args), *constexprs.items(), *options.items())
    compiled = cache.get(key)
    if compiled is not None:
        compiled[tuple(grid) + (1,) * (3 - len(grid))](*args, *constexprs.values())
        return
    compiled = kernel[grid](*args, **constexprs, **options)
    if compiled is not None:  # (the interpreter returns nothing to keep)
        cache[key] = compiled
