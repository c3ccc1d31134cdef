"""quantize_weight_per_channel / _per_tensor vs an independent fp64 reference."""

import pytest
import torch

from rocm_attn.kernels import fp8_dtype, fp8_max
from rocm_attn.kernels.per_token_quant import scale_floor
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel, quantize_weight_per_tensor

HALF_ULP = 2.0 ** -4  # e4m3: 3 mantissa bits, a correct rounding is within half an ulp
SUBNORMAL_STEP = 2.0 ** -9  # smallest e4m3 step (in units of the scale)


def check_dequant(w, wq, scale):
    """Every element of wq * scale is the nearest-ish fp8 value to w (half an ulp, or subnormal step)."""
    w64 = w.double()
    back = wq.double() * scale.double()
    bound = HALF_ULP * w64.abs() + SUBNORMAL_STEP / 2 * scale.double() + 1e-30
    assert ((back - w64).abs() <= bound).all()


@pytest.mark.parametrize("shape", [(1, 1), (16, 32), (17, 33), (0, 16), (48, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_channel(shape, dtype):
    w = torch.randn(shape).to(dtype)
    wq, scale = quantize_weight_per_channel(w)
    assert wq.dtype == fp8_dtype() and wq.shape == w.shape and wq.is_contiguous()
    assert scale.dtype == torch.float32 and scale.shape == (shape[0], 1)
    amax = w.double().abs().amax(dim=1, keepdim=True) if shape[1] else torch.zeros(shape[0], 1).double()
    want = torch.maximum(amax / fp8_max(), torch.full_like(amax, scale_floor(fp8_max())))
    torch.testing.assert_close(scale.double(), want, rtol=1e-6, atol=0)
    check_dequant(w, wq, scale)


def test_per_channel_zero_rows_and_outliers():
    w = torch.randn(8, 64)
    w[2] = 0.0
    w[5] *= 1000.0
    wq, scale = quantize_weight_per_channel(w)
    assert torch.isfinite(scale).all() and (wq[2].float() == 0).all()
    check_dequant(w, wq, scale)
    # an outlier channel keeps its own scale: the other rows are untouched
    _, scale_clean = quantize_weight_per_channel(torch.cat([w[:5], w[6:]]))
    torch.testing.assert_close(scale_clean, torch.cat([scale[:5], scale[6:]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tensor(dtype):
    w = torch.randn(24, 40).to(dtype)
    w[3, 4] = 50.0
    wq, scale = quantize_weight_per_tensor(w)
    assert wq.dtype == fp8_dtype() and scale.shape == (1,) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.double(), w.double().abs().max().reshape(1) / fp8_max(), rtol=1e-6, atol=0)
    check_dequant(w, wq, scale.expand(24, 1))


def test_per_tensor_zero_weight():
    wq, scale = quantize_weight_per_tensor(torch.zeros(4, 8))
    assert scale.item() == pytest.approx(scale_floor(fp8_max())) and (wq.float() == 0).all()


@pytest.mark.parametrize("fn", [quantize_weight_per_channel, quantize_weight_per_tensor])
@pytest.mark.parametrize(
    "bad, err, exc",
    [
        (torch.randn(16), "must be \\[N, K\\]", ValueError),
        (torch.randn(2, 3, 4), "must be \\[N, K\\]", ValueError),
        (torch.randint(0, 5, (4, 4)), "dtype", TypeError),
        (torch.randn(4, 4, dtype=torch.float64), "dtype", TypeError),
    ],
)
def test_bad_input(fn, bad, err, exc):
    with pytest.raises(exc, match=err):
        fn(bad)


def test_non_contiguous_weight():
    w = torch.randn(32, 16).t()
    wq, scale = quantize_weight_per_channel(w)
    wq2, scale2 = quantize_weight_per_channel(w.contiguous())
    assert torch.equal(wq.float(), wq2.float()) and torch.equal(scale, scale2)
