"""ptpc_linear_eager (FP8Linear's eager calls): the op's result, checks and provider choices, made once per
kind of call; calls that must see the op (compiling, fake tensors, modes, the profiler, autograd) get it."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rocm_attn.kernels.ptpc_linear as ptpc_linear_module
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.ptpc_linear import ptpc_linear_eager
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.registry import ProviderUnavailableError


def operands(N=24, K=32, bias=True, dtype=torch.float32):
    wq, w_scale = quantize_weight_per_channel(torch.randn(N, K))
    return wq, w_scale, (torch.randn(N).to(dtype) if bias else None)


@pytest.fixture
def counted_selects(monkeypatch):
    """How many provider choices the eager path makes (each is one registry.select)."""
    calls = []
    real = ptpc_linear_module.select

    def select(op, *args, **kwargs):
        calls.append(op)
        return real(op, *args, **kwargs)

    monkeypatch.setattr(ptpc_linear_module, "select", select)
    monkeypatch.setattr(ptpc_linear_module, "_EAGER_PLANS", {})
    return calls


@pytest.mark.parametrize("provider", ["auto", "triton"])  # auto on CPU: the torch provider
@pytest.mark.parametrize("bias", [True, False])
def test_same_result_as_the_op_and_one_choice_per_kind(provider, bias, counted_selects):
    wq, w_scale, b = operands(bias=bias)
    with use_kernels(provider), torch.no_grad():
        for shape in [(3, 32), (2, 5, 32), (3, 32), (1, 32), (2, 5, 32)]:
            x = torch.randn(shape)
            want = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, b)
            got = ptpc_linear_eager(x, wq, w_scale, b)
            assert got.shape == want.shape and torch.equal(got, want)
    # three kinds of call (M = 3, 10, 1); the triton provider chooses the quant's and the GEMM's provider too
    per_kind = ["ptpc_linear"] if provider == "auto" else ["ptpc_linear", "per_token_quant_fp8", "ptpc_scaled_mm"]
    assert counted_selects == per_kind * 3


def test_a_new_provider_request_makes_a_new_plan(counted_selects, monkeypatch):
    wq, w_scale, b = operands()
    x = torch.randn(4, 32)
    with torch.no_grad():
        auto = ptpc_linear_eager(x, wq, w_scale, b)
        with use_kernels("triton"):
            forced = ptpc_linear_eager(x, wq, w_scale, b)
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # no GPU, no interpreter: triton cannot run
        with use_kernels("triton"), pytest.raises(ProviderUnavailableError, match="Triton needs a GPU"):
            ptpc_linear_eager(x, wq, w_scale, b)
    assert counted_selects[0] == "ptpc_linear" and counted_selects[1:4] == [
        "ptpc_linear", "per_token_quant_fp8", "ptpc_scaled_mm"]
    assert (auto - forced).abs().max() <= 1e-2 * auto.abs().max()  # two providers, one answer (fp8 ulps)


@pytest.mark.parametrize("bad, error", [
    (lambda x, wq, ws, b: (x[:, :31], wq, ws, b), "last dim of x must be K"),
    (lambda x, wq, ws, b: (x.to(torch.int32), wq, ws, b), "x"),
    (lambda x, wq, ws, b: (x, wq.float(), ws, b), "wq must be an fp8 tensor"),
    (lambda x, wq, ws, b: (x, wq, ws[:3], b), "w_scale must have shape"),
    (lambda x, wq, ws, b: (x, wq, ws, b[:3]), "bias must be"),
    (lambda x, wq, ws, b: (x.reshape(1, 1, 1, 1, 1, 1, 1, 1, 4, 32), wq, ws, b), "x"),
])
def test_bad_input_gets_the_ops_error(bad, error):
    wq, w_scale, b = operands()
    args = bad(torch.randn(4, 32), wq, w_scale, b)
    with torch.no_grad():
        with pytest.raises((TypeError, ValueError), match=error) as from_op:
            torch.ops.rocm_attn.ptpc_linear(*args)
        for _ in range(2):  # not cached as a plan: the second call raises too
            with pytest.raises(type(from_op.value), match=error):
                ptpc_linear_eager(*args)


def test_autograd_still_raises_on_backward():
    wq, w_scale, b = operands()
    x = torch.randn(4, 32, requires_grad=True)
    out = ptpc_linear_eager(x, wq, w_scale, b)
    with pytest.raises(RuntimeError, match="has no backward"):
        out.sum().backward()


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_modes_fake_tensors_and_the_profiler_see_the_op():
    wq, w_scale, b = operands()
    x = torch.randn(4, 32)
    with torch.no_grad():
        with OpLog() as log:
            ptpc_linear_eager(x, wq, w_scale, b)
        assert "rocm_attn.ptpc_linear.default" in log.ops
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode() as mode:
            out = ptpc_linear_eager(mode.from_tensor(x), mode.from_tensor(wq), mode.from_tensor(w_scale),
                                    mode.from_tensor(b))
        assert out.shape == (4, 24)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ptpc_linear_eager(x, wq, w_scale, b)
        assert any(e.key == "rocm_attn::ptpc_linear" for e in prof.key_averages())


def test_compiled_module_keeps_the_op():
    """Traced by dynamo, the eager path is the op itself (the passes match it)."""
    wq, w_scale, b = operands()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = torch.compile(lambda x: ptpc_linear_eager(x, wq, w_scale, b), backend=backend, fullgraph=True)
    x = torch.randn(4, 32)
    with torch.no_grad():
        out = fn(x)
        assert torch.equal(out, torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, b))
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert len(targets) == 1 and targets[0] in (torch.ops.rocm_attn.ptpc_linear,
                                                torch.ops.rocm_attn.ptpc_linear.default)


def test_switched_off_every_call_takes_the_op(monkeypatch):
    wq, w_scale, b = operands()
    monkeypatch.setenv("ROCM_ATTN_EAGER_PLANS", "0")
    calls = []
    monkeypatch.setattr(ptpc_linear_module, "_EAGER_PLANS", {})  # no plan kept from an earlier test
    monkeypatch.setattr(ptpc_linear_module, "_first_call", lambda *a: calls.append(a))
    with torch.no_grad():
        out = ptpc_linear_eager(torch.randn(4, 32), wq, w_scale, b)
    assert out.shape == (4, 24) and not calls
