"""kernels/triton_kernels/launch_cache.py: the first call of a key goes through the JIT, later ones launch the
kept compiled kernel with the same arguments (constexprs positionally, a 3-d grid). The GPU tests check the
real kernels' outputs through both paths (tests/gpu/test_mla_decode_gpu.py, test_gluon_gemm_gpu.py)."""

import pytest
import torch

from rocm_attn.kernels.triton_kernels import launch_cache


class FakeCompiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("compiled", grid, args))


class FakeJit:
    """kernel[grid](*args, **kwargs) like a JITFunction: returns its compiled kernel (or None, as the
    interpreter does)."""

    def __init__(self, returns_compiled=True):
        self.log = []
        self.returns_compiled = returns_compiled

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return FakeCompiled(self.log) if self.returns_compiled else None
        return run


def test_first_call_jits_then_the_compiled_kernel_is_launched_directly():
    kernel, cache = FakeJit(), {}
    x = torch.zeros(64)
    constexprs = dict(BLOCK=64, STAGES=2)
    launch_cache.launch(cache, kernel, (4,), (x, 7), constexprs, num_warps=4)
    # fresh arguments with the same traits (dtype, alignment; 7 and 23: not 1, not divisible by 16)
    y = torch.ones(32)
    launch_cache.launch(cache, kernel, (5, 2), (y, 23), constexprs, num_warps=4)
    assert kernel.log[0] == ("jit", (4,), (x, 7), dict(BLOCK=64, STAGES=2, num_warps=4))
    # the constexprs follow the arguments in the kernel's order; the grid is padded to 3-d
    assert kernel.log[1] == ("compiled", (5, 2, 1), (y, 23, 64, 2))
    # what Triton would specialize differently compiles again: an int's traits, a dtype, a constexpr,
    # an option
    launch_cache.launch(cache, kernel, (1,), (x, 16), constexprs, num_warps=4)
    launch_cache.launch(cache, kernel, (1,), (x.half(), 7), constexprs, num_warps=4)
    launch_cache.launch(cache, kernel, (1,), (x, 7), dict(BLOCK=32, STAGES=2), num_warps=4)
    launch_cache.launch(cache, kernel, (1,), (x, 7), constexprs, num_warps=8)
    assert [entry[0] for entry in kernel.log[2:]] == ["jit"] * 4 and len(cache) == 5


def test_nothing_is_kept_when_the_launch_returns_no_kernel():
    kernel, cache = FakeJit(returns_compiled=False), {}
    for _ in range(2):
        launch_cache.launch(cache, kernel, (1,), (torch.zeros(1),), {})
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"] and not cache


def test_traits_are_what_triton_specializes_on():
    assert [launch_cache.arg_traits(v) for v in (1, 32, 7, 2**31)] == [
        (True, False, False), (False, True, False), (False, False, False), (False, True, True)]
    x = torch.zeros(64, dtype=torch.uint8)
    assert launch_cache.arg_traits(x[:16]) == (torch.uint8, x.data_ptr() % 16 == 0)
    assert launch_cache.arg_traits(x[1:]) == (torch.uint8, (x.data_ptr() + 1) % 16 == 0)
    assert launch_cache.arg_traits(0.5) is float and launch_cache.arg_traits(True) is bool
    with pytest.raises(TypeError, match="no specialization traits"):
        launch_cache.arg_traits("a string")


def test_traits_match_tritons_own_specialization():
    # the launch cache's keys rest on these traits being what the installed Triton specializes on: if a
    # Triton release changes its rules, this fails and arg_traits needs another look
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    for v in (0, 1, 2, 15, 16, 17, 48, 576, 2**31 - 1, 2**31, 2**31 + 16):
        kind, spec = native_specialize_impl(CUDABackend, v, False, True, True)
        is_one, divisible, wide = launch_cache.arg_traits(v)
        if is_one:
            assert (kind, spec) == ("constexpr", 1)
        else:
            assert kind == ("i64" if wide else "i32") and (spec == "D") == divisible, (v, kind, spec)
    x = torch.empty(64, dtype=torch.bfloat16)
    for t in (x, x[1:], x[8:]):
        assert (native_specialize_impl(CUDABackend, t, False, True, True)[1] == "D") == \
            launch_cache.arg_traits(t)[1]


def test_cdiv_and_next_power_of_2_are_tritons():
    import triton

    for a in range(0, 70):
        assert launch_cache.next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 3, 16, 64):
            assert launch_cache.cdiv(a, b) == triton.cdiv(a, b), (a, b)
