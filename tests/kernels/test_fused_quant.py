"""rms_norm_quant_fp8, fused_add_rms_norm_quant_fp8, silu_mul_quant_fp8: every provider vs
independent fp64 references that round where Hugging Face rounds."""

import math

import pytest
import torch

from rocm_attn.kernels import fp8_dtype, fp8_max, use_kernels
from rocm_attn.kernels.per_token_quant import scale_floor

PROVIDERS = ["torch", "triton"]
EPS = 1e-6


def quant_fp64(y):
    fmax = fp8_max()
    y = y.double()
    amax = y.abs().amax(dim=-1, keepdim=True) if y.shape[-1] else torch.zeros(*y.shape[:-1], 1).double()
    inv = torch.tensor(1.0 / fmax, dtype=torch.float32).double()  # scale = fp32(amax * fp32(1/fmax))
    scale = torch.clamp((amax * inv).float().double(), min=scale_floor(fmax))
    return (y / scale).clamp(-fmax, fmax), scale


def rms_norm_fp64(x, weight, eps):
    """HF LlamaRMSNorm in fp64, rounding to x's dtype where HF does."""
    h = x.double()
    h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    y = weight.double() * h.to(x.dtype).double()
    return y.to(torch.promote_types(weight.dtype, x.dtype))


def silu_mul_fp64(gate_up):
    n = gate_up.shape[-1] // 2
    g, u = gate_up[..., :n].double(), gate_up[..., n:].double()
    s = (g / (1 + torch.exp(-g))).to(gate_up.dtype).double()
    return (s * u).to(gate_up.dtype)


def check_quant(xq, scale, y, provider, device_cpu=True):
    q_ref, s_ref = quant_fp64(y)
    assert xq.dtype == fp8_dtype() and xq.shape == y.shape and scale.shape == (*y.shape[:-1], 1)
    # the roundings to bf16/fp16 in between can differ by an ulp from fp32 vs fp64 math
    rtol = 1e-5 if y.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(scale.double(), s_ref, rtol=rtol, atol=0)
    if xq.numel() == 0:
        return
    err = (xq.double() - q_ref).abs() / q_ref.abs().clamp_min(2.0 ** -6)
    bound = 0.0626 if y.dtype == torch.float32 else 0.0626 + 1e-2
    if provider == "triton" and device_cpu:  # interpreter fp8 cast (REFERENCE.md)
        # a wrong binade is off by at most half; few elements are
        assert err.max() <= 0.51 and (err > bound).sum() <= max(2, 0.05 * err.numel())
    else:
        assert err.max() <= bound


def make_rows(shape, dtype):
    x = torch.randn(shape)
    if x.numel() and x.shape[0] > 2 and x.shape[-1] > 3:
        x[1] = 0.0  # a zero row
        x[2, ..., 3] = 1000.0  # an outlier
    return x.to(dtype)


SHAPES = [(1, 16), (7, 33), (2, 3, 64), (0, 32), (5, 1)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def skip_interpreter_bf16(provider, dtype):
    if provider == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter mishandles bf16 (REFERENCE.md); covered on the GPU")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_dtype", ["same", "fp32"])
def test_rms_norm_quant(provider, shape, dtype, weight_dtype):
    skip_interpreter_bf16(provider, dtype)
    x = make_rows(shape, dtype)
    w = (torch.rand(shape[-1]) + 0.5).to(dtype if weight_dtype == "same" else torch.float32)
    with use_kernels(provider):
        xq, scale = torch.ops.rocm_attn.rms_norm_quant_fp8(x, w, EPS)
    check_quant(xq, scale, rms_norm_fp64(x, w, EPS), provider)
    if x.numel() and shape[0] > 2 and shape[-1] > 3:
        assert (xq[1].float() == 0).all() and torch.isfinite(scale).all()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_quant(provider, shape, dtype):
    skip_interpreter_bf16(provider, dtype)
    x, residual = make_rows(shape, dtype), torch.randn(shape).to(dtype)
    w = (torch.rand(shape[-1]) + 0.5).to(dtype)
    with use_kernels(provider):
        xq, scale, residual_out = torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8(x, residual, w, EPS)
    r_ref = (x.double() + residual.double()).to(dtype)
    assert residual_out.dtype == dtype
    torch.testing.assert_close(residual_out, r_ref, rtol=0, atol=0)
    check_quant(xq, scale, rms_norm_fp64(r_ref, w, EPS), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", [(1, 32), (7, 66), (2, 3, 40), (0, 8), (4, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_quant(provider, shape, dtype):
    skip_interpreter_bf16(provider, dtype)
    gate_up = make_rows(shape, dtype)
    with use_kernels(provider):
        xq, scale = torch.ops.rocm_attn.silu_mul_quant_fp8(gate_up)
    assert xq.shape == (*shape[:-1], shape[-1] // 2)
    check_quant(xq, scale, silu_mul_fp64(gate_up), provider)


@pytest.mark.parametrize("programs", [1, 2, 5])
def test_silu_mul_quant_persistent_rows(programs):
    """Many rows longer than one block take the persistent path: `programs` programs walk 7 rows (one
    program takes them all, or some take two), each through its scratch row, in 32-wide chunks."""
    from rocm_attn.kernels.triton_kernels.silu_mul_quant import silu_mul_quant_fp8_launch

    gate_up = make_rows((7, 2 * 100), torch.float32)
    xq, scale = silu_mul_quant_fp8_launch(gate_up, fp8_dtype(), fp8_max(), max_single_block=32, programs=programs,
                                          few_rows=0)
    check_quant(xq, scale, silu_mul_fp64(gate_up), "triton")


def test_silu_mul_quant_few_long_rows():
    """Few rows longer than one block: silu*mul as an elementwise kernel, then per_token_quant_fp8;
    the same bits as the persistent path."""
    from rocm_attn.kernels.triton_kernels.silu_mul_quant import silu_mul_quant_fp8_launch

    gate_up = make_rows((3, 2 * 1100), torch.float32)  # > one 1024-wide elementwise block per row
    few = silu_mul_quant_fp8_launch(gate_up, fp8_dtype(), fp8_max(), max_single_block=32)
    persistent = silu_mul_quant_fp8_launch(gate_up, fp8_dtype(), fp8_max(), max_single_block=32, few_rows=0)
    assert torch.equal(few[0].view(torch.uint8), persistent[0].view(torch.uint8)) and torch.equal(few[1], persistent[1])
    check_quant(*few, silu_mul_fp64(gate_up), "triton")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("persistent", [False, True])
def test_silu_mul_quant_separate_gate_and_up(provider, persistent):
    """gate and up as two tensors (two projections) give what their concatenation gives; up may be
    a strided view."""
    from rocm_attn.kernels.triton_kernels.silu_mul_quant import silu_mul_quant_fp8_launch

    gate, up = make_rows((5, 48), torch.float32), torch.randn(48, 5).t()
    with use_kernels(provider):
        if provider == "triton" and persistent:
            xq, scale = silu_mul_quant_fp8_launch(gate, fp8_dtype(), fp8_max(), max_single_block=16, up=up,
                                                  few_rows=0)
        else:
            xq, scale = torch.ops.rocm_attn.silu_mul_quant_fp8(gate, up)
        xq_cat, scale_cat = torch.ops.rocm_attn.silu_mul_quant_fp8(torch.cat([gate, up], -1))
    assert torch.equal(xq.view(torch.uint8), xq_cat.view(torch.uint8)) and torch.equal(scale, scale_cat)
    check_quant(xq, scale, silu_mul_fp64(torch.cat([gate, up], -1)), provider)


def test_norm_rows_too_long_for_triton_fall_back_in_auto():
    from rocm_attn.kernels.fused_quant import RMS_NORM_TRITON_MAX_K, _norm_triton_supports

    assert _norm_triton_supports(torch.empty(1, RMS_NORM_TRITON_MAX_K + 1)) is not None
    assert _norm_triton_supports(torch.empty(1, 4096)) is None


def test_opcheck():
    x, r, w = torch.randn(3, 32), torch.randn(3, 32), torch.rand(32) + 0.5
    torch.library.opcheck(torch.ops.rocm_attn.rms_norm_quant_fp8.default, (x, w, EPS))
    torch.library.opcheck(torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8.default, (x, r, w, EPS))
    torch.library.opcheck(torch.ops.rocm_attn.silu_mul_quant_fp8.default, (torch.randn(2, 3, 48),))
    torch.library.opcheck(torch.ops.rocm_attn.silu_mul_quant_fp8.default, (torch.randn(3, 24), torch.randn(3, 24)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_non_contiguous_input(provider):
    x, w, gu = torch.randn(32, 8).t(), torch.rand(32) + 0.5, torch.randn(64, 6).t()
    with use_kernels(provider):
        xq, scale = torch.ops.rocm_attn.rms_norm_quant_fp8(x, w, EPS)
        check_quant(xq, scale, rms_norm_fp64(x, w, EPS), provider)
        xq, scale = torch.ops.rocm_attn.silu_mul_quant_fp8(gu)
        check_quant(xq, scale, silu_mul_fp64(gu), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_outputs_are_contiguous_as_the_fake_impl_says(provider):
    """Every provider returns contiguous outputs for strided inputs, as the fake impls promise (a compiled graph
    plans its buffers from them): transposed x / residual / gate_up for the four quant ops."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.rocm_attn
    x, r, w, gu = torch.randn(16, 3).t(), torch.randn(16, 3).t(), torch.rand(16) + 0.5, torch.randn(32, 3).t()
    calls = [(ops.per_token_quant_fp8, (x,)), (ops.rms_norm_quant_fp8, (x, w, EPS)),
             (ops.fused_add_rms_norm_quant_fp8, (x, r, w, EPS)), (ops.silu_mul_quant_fp8, (gu,))]
    for op, args in calls:
        with use_kernels(provider):
            real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        assert [t.stride() for t in real] == [t.stride() for t in fake], op
        assert all(t.is_contiguous() for t in real), op


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda: torch.ops.rocm_attn.rms_norm_quant_fp8(torch.randn(16), torch.ones(16), EPS), ValueError, "at least 2 dims"),
        (lambda: torch.ops.rocm_attn.rms_norm_quant_fp8(torch.randn(2, 16), torch.ones(15), EPS), ValueError, "weight must be"),
        (lambda: torch.ops.rocm_attn.rms_norm_quant_fp8(torch.randint(0, 3, (2, 16)), torch.ones(16), EPS), TypeError, "dtype"),
        (lambda: torch.ops.rocm_attn.rms_norm_quant_fp8(torch.randn(2, 16), torch.ones(16), -1.0), ValueError, "eps"),
        (lambda: torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8(torch.randn(2, 16), torch.randn(3, 16), torch.ones(16), EPS), ValueError, "residual"),
        (lambda: torch.ops.rocm_attn.silu_mul_quant_fp8(torch.randn(2, 15)), ValueError, "even"),
        (lambda: torch.ops.rocm_attn.silu_mul_quant_fp8(torch.randn(16)), ValueError, "at least 2 dims"),
        (lambda: torch.ops.rocm_attn.silu_mul_quant_fp8(torch.randn(2, 16), torch.randn(2, 15)), ValueError, "match gate"),
        (lambda: torch.ops.rocm_attn.silu_mul_quant_fp8(torch.randn(2, 16), torch.randn(2, 16).half()), ValueError,
         "match gate"),
    ],
)
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_matches_hf_llama_rmsnorm():
    """Against transformers' own LlamaRMSNorm module."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64) + 0.5)
        x = torch.randn(5, 64, dtype=torch.bfloat16)
        xq_ref, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(norm(x))
    xq, s = torch.ops.rocm_attn.rms_norm_quant_fp8(x, norm.weight.detach(), 1e-5)
    assert torch.equal(xq.float(), xq_ref.float()) and torch.equal(s, s_ref)
    assert math.isfinite(float(s.sum()))
