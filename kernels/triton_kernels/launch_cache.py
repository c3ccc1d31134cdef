"""Launch a kernel's compiled specialization directly once it has been compiled.

Why: Triton's JIT launch (argument binding, specialization, cache lookup) costs tens of microseconds of
host time per call. For a decode kernel that runs ~20-150 us on the GPU that is the whole budget of an eager
or non-CUDA-graph caller (H100, Session 15: an eager `mla_decode` call spent ~180 us on the host, a third of
it in the JIT path). After the first call of a specialization we keep Triton's CompiledKernel and call it.

The caller builds the key: everything the JIT specializes the kernel on. That is the constexprs and the
launch options, the argument types (dtypes, descriptor block shapes), and, for each int argument and each
pointer, the traits below. A key that missed one of these could reuse a kernel compiled for other inputs,
so each launcher lists its ints and pointers explicitly.
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


def int_traits(*values: int) -> tuple:
    """What Triton specializes an int argument on: == 1, divisible by 16, needs 64 bits."""
    return tuple((v == 1, v % 16 == 0, v >= 2**31) for v in values)


def pointer_traits(*tensors: torch.Tensor) -> tuple:
    """What Triton specializes a pointer argument on: 16-byte alignment."""
    return tuple(t.data_ptr() % 16 == 0 for t in tensors)


def launch(cache: dict, key: tuple, kernel, grid: tuple, args: tuple, constexprs: dict, **options) -> None:
    """kernel[grid](*args, **constexprs, **options) through the JIT the first time a key is met; after that
    the compiled kernel is launched directly (it takes the constexprs positionally, after args, in the
    kernel's order, and a 3-d grid)."""
    compiled = cache.get(key)
    if compiled is not None:
        compiled[tuple(grid) + (1,) * (3 - len(grid))](*args, *constexprs.values())
        return
    compiled = kernel[grid](*args, **constexprs, **options)
    if compiled is not None:  # (the interpreter returns nothing to keep)
        cache[key] = compiled
