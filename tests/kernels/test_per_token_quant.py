"""per_token_quant_fp8: every provider vs an independent fp64 reference."""

import pytest
import torch
import triton
import triton.language as tl
from rocm_attn.kernels import fp8_dtype, fp8_max, use_kernels
from rocm_attn.kernels.per_token_quant import scale_floor
from rocm_attn.kernels.triton_kernels.per_token_quant import divide_by_row_scale

import rocm_attn

PROVIDERS = ["torch", "triton"]


def reference(x: torch.Tensor):
    """fp64, written independently of the kernels. The scale is defined as
    fp32(amax * fp32(1/fp8_max)) floored: the product of two fp32 values is exact in fp64,
    so one rounding to fp32 gives the one correct answer every provider must match."""
    fmax = fp8_max()
    inv = torch.tensor(1.0 / fmax, dtype=torch.float32).double()
    x64 = x.double()
    amax = x64.abs().amax(dim=-1, keepdim=True)
    scale = (amax * inv).float().double()
    scale = torch.maximum(scale, torch.full_like(amax, scale_floor(fmax)))
    return (x64 / scale).clamp(-fmax, fmax), scale


def check(x, provider):
    with use_kernels(provider):
        xq, scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    q_ref, s_ref = reference(x)
    assert xq.dtype == fp8_dtype() and xq.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (*x.shape[:-1], 1)
    torch.testing.assert_close(scale.double(), s_ref, rtol=0, atol=0)  # bit for bit
    # fp8 e4m3 has 3 mantissa bits: a correct cast is within half an ulp (2^-4 relative).
    # The Triton interpreter rounds some values near powers of two to the wrong binade
    # (REFERENCE.md), so it gets a looser elementwise bound, plus a tight bound on most.
    err = (xq.double() - q_ref).abs() / q_ref.abs().clamp_min(2.0 ** -6)
    if err.numel() == 0:
        return xq, scale
    if provider == "triton" and x.device.type == "cpu":
        assert (err > 0.0626).float().mean() < 0.05
    else:
        assert err.max() <= 0.0626
    return xq, scale


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", [(1, 16), (7, 33), (32, 256), (0, 64), (3, 1), (2, 5, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(provider, shape, dtype):
    if provider == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter mishandles bf16 (REFERENCE.md); covered on the GPU")
    x = torch.randn(shape).to(dtype)
    check(x, provider)


@pytest.mark.parametrize("block_k", [None, 16])
def test_triton_looped_rows(block_k):
    """The two-pass (looped) kernel for long rows, forced at small K, and the default."""
    from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch

    x = torch.randn(5, 70)
    x[1, 69] = 50.0  # the amax in the last, partial chunk
    xq, scale = per_token_quant_fp8_launch(x, fp8_dtype(), fp8_max(), block_k=block_k)
    q_ref, s_ref = reference(x)
    torch.testing.assert_close(scale.double(), s_ref, rtol=0, atol=0)
    err = (xq.double() - q_ref).abs() / q_ref.abs().clamp_min(2.0 ** -6)
    assert (err > 0.0626).float().mean() < 0.05


@pytest.mark.parametrize("provider", PROVIDERS)
def test_zero_rows_and_outliers(provider):
    x = torch.randn(6, 128)
    x[1] = 0.0
    x[3, 7] = 1000.0 * x[3].abs().max()
    xq, scale = check(x, provider)
    assert torch.isfinite(scale).all()
    assert scale[1].item() == torch.tensor(scale_floor(fp8_max()), dtype=torch.float32).item()
    assert (xq[1].float() == 0).all()
    # the outlier row does not change the other rows' scales
    _, scale_clean = torch.ops.rocm_attn.per_token_quant_fp8(torch.cat([x[:3], x[4:]]))
    torch.testing.assert_close(scale_clean, torch.cat([scale[:3], scale[4:]]))


def test_nan_row_is_isolated():
    x = torch.randn(4, 64)
    x[2, 5] = float("nan")
    xq, scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    rows_ok = torch.isfinite(scale).squeeze(1)
    assert rows_ok.tolist() == [True, True, False, True]
    assert torch.isfinite(xq.float()[rows_ok]).all()


def test_non_contiguous_input():
    x = torch.randn(64, 32).t()  # [32, 64], strided
    xq, scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    xq2, scale2 = torch.ops.rocm_attn.per_token_quant_fp8(x.contiguous())
    assert torch.equal(xq.float(), xq2.float()) and torch.equal(scale, scale2)


@pytest.mark.parametrize(
    "bad, err",
    [
        (torch.randn(16), "at least 2 dims"),
        (torch.randint(0, 5, (4, 4)), "dtype"),
        (torch.randn(4, 4, dtype=torch.float64), "dtype"),
    ],
)
def test_bad_input(bad, err):
    with pytest.raises((ValueError, TypeError), match=err):
        torch.ops.rocm_attn.per_token_quant_fp8(bad)


def test_opcheck():
    torch.library.opcheck(torch.ops.rocm_attn.per_token_quant_fp8.default, (torch.randn(5, 48),))


def test_forced_provider_that_cannot_run_says_why(monkeypatch):
    with use_kernels("aiter"):
        with pytest.raises(rocm_attn.kernels.ProviderUnavailableError, match="aiter"):
            torch.ops.rocm_attn.per_token_quant_fp8(torch.randn(2, 16))
    monkeypatch.setenv("ROCM_ATTN_KERNELS", "nonsense")
    with pytest.raises(ValueError, match="unknown kernel provider"):
        torch.ops.rocm_attn.per_token_quant_fp8(torch.randn(2, 16))


def test_triton_under_the_interpreter_refuses_bf16_dots(monkeypatch):
    """The interpreter computes a bf16 tl.dot wrongly (REFERENCE.md; attention came out ~1e9 off): a forced
    triton on CPU bf16 tensors is refused for the ops whose kernels take one, with the reason; the quant
    kernels (no dot) still run bf16, and the attention kernels fp32."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)
    with use_kernels("triton"):
        with pytest.raises(rocm_attn.kernels.ProviderUnavailableError, match="bf16 tl.dot wrongly"):
            torch.ops.rocm_attn.flash_attention(q, q, q, None, 0.25, False)
        out = torch.ops.rocm_attn.flash_attention(q.float(), q.float(), q.float(), None, 0.25, False)
        xq, _ = torch.ops.rocm_attn.per_token_quant_fp8(torch.randn(2, 16, dtype=torch.bfloat16))
    assert torch.isfinite(out).all() and xq.dtype == rocm_attn.kernels.fp8_dtype()


@triton.jit
def _divide_rows_kernel(x_ptr, scale_ptr, out_ptr, K, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    x = tl.load(x_ptr + row * K + offs, mask=mask)
    tl.store(out_ptr + row * K + offs, divide_by_row_scale(x, tl.load(scale_ptr + row)), mask=mask)


def test_divide_by_row_scale_is_ieee_division():
    """The quant kernels' division (1/scale as two floats per row, one fma correction) against IEEE division (torch
    fp32 on CPU): every bf16 value and random full-mantissa fp32 values, over scales from the floor to 1e35
    and inf. Bit for bit where the quotient is >= 2^-60; below, the same sign (the fp8 cast makes both a
    signed zero); NaN where it is NaN. The fp8 casts of the clamped quotients must match everywhere."""
    bf16_all = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    g = torch.Generator().manual_seed(23)
    fp32_random = torch.randn(2**16, generator=g) * torch.exp2(torch.randint(-40, 40, (2**16,), generator=g))
    amax = torch.rand(12, generator=g).to(torch.bfloat16).float() * torch.exp2(
        torch.randint(-10, 20, (12,), generator=g).float())
    fmax = fp8_max()
    inv_fmax = torch.tensor(1.0 / fmax, dtype=torch.float32)
    scales = torch.cat([amax * inv_fmax,  # fp32 products, as the kernels form them
                        torch.tensor([scale_floor(fmax), 1.0, 0.5, 3.0, 1e-3, 7.25e12, 1e35, float("inf")])])
    for x_row in (bf16_all, fp32_random):
        x = x_row.expand(len(scales), -1).contiguous()
        got = torch.empty_like(x)
        _divide_rows_kernel[(len(scales),)](x, scales, got, x.shape[1], BLOCK=x.shape[1])
        ref = x / scales[:, None]
        # in a kernel |x| <= amax = fp8_max * scale: leave out quotients far beyond that (x infinite with a
        # finite scale, or huge x over a small scale, where the intermediate products overflow)
        used = ~(ref.abs() > 2.0 ** 64)
        got, ref = got[used], ref[used]
        assert torch.equal(got.isnan(), ref.isnan())
        got, ref = got[~ref.isnan()], ref[~ref.isnan()]
        # the remainder x - q * scale (~|x| 2^-24) must be a normal number for the correction to be exact:
        # below, the last bits may differ, on quotients that the fp8 cast turns into zeros (< 2^-10)
        normal = ref.abs() >= 2.0 ** -60
        assert torch.equal(got[normal].view(torch.int32), ref[normal].view(torch.int32))
        assert torch.equal(torch.signbit(got[~normal]), torch.signbit(ref[~normal]))
        assert (got[~normal].abs() < 2.0 ** -59).all()
        q_got = got.clamp(-fmax, fmax).to(fp8_dtype()).view(torch.uint8)
        q_ref = ref.clamp(-fmax, fmax).to(fp8_dtype()).view(torch.uint8)
        assert torch.equal(q_got, q_ref)


@pytest.mark.parametrize("K", [64, 70])
def test_triton_inf_row_matches_reference(K):
    """A row with an inf: its scale is inf, the inf's quotient NaN (the reference's; the clamp keeps it) and
    every other one a signed zero, as in the torch reference. Single-block and two-pass kernels."""
    from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch

    x = torch.randn(3, K)
    x[1, 9] = float("inf")
    x[1, 10] = -0.0
    with use_kernels("torch"):
        q_ref, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
    assert q_ref[1].float().isnan().sum() == 1 and q_ref[1, 9].float().isnan()
    others = torch.arange(K) != 9
    for block_k in (None, 16):
        q, s = per_token_quant_fp8_launch(x, fp8_dtype(), fp8_max(), block_k=block_k)
        assert torch.equal(s, s_ref) and s[1].item() == float("inf")
        assert torch.equal(q.view(torch.uint8)[1, others], q_ref.view(torch.uint8)[1, others])  # signed zeros
        assert q[1, others].float().eq(0).all() and torch.signbit(q[1, 10].float())
        # the interpreter's fp8 cast (REFERENCE.md's traps) turns NaN into a number and moves some values near
        # powers of two: the NaN and the other rows are checked bit for bit on the GPU
        # (tests/gpu/test_linear_gpu.py::test_per_token_quant_triton_exact)
