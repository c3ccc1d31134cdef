"""ptpc_linear_small_m (quant fused into the small-M GEMM, one launch) vs the two-launch
composition per_token_quant_fp8 + ptpc_scaled_mm: equal up to fp32 summation order.

Under the Triton interpreter (CPU) every fp8 cast inside a kernel has the interpreter's rounding
quirk (REFERENCE.md), so there the reference quantizes with the Triton quant kernel (same quirk,
its scale checked bit for bit against torch's); on a GPU the reference is the torch provider."""

import pytest
import torch
from rocm_attn.kernels import fp8_max, use_kernels
from rocm_attn.kernels import ptpc_linear as ptpc_linear_mod
from rocm_attn.kernels.per_token_quant import per_token_quant_fp8_torch
from rocm_attn.kernels.ptpc_scaled_mm import ptpc_scaled_mm_torch
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.triton_kernels import ptpc_gemm_small_m
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m as fused
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])  # interpreter: no bf16
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def quantize(x2):
    xq, scale = per_token_quant_fp8_torch(x2)
    if GPU:
        return xq, scale
    xq_triton, scale_triton = per_token_quant_fp8_launch(x2, xq.dtype, fp8_max(xq.dtype))
    torch.testing.assert_close(scale_triton, scale, rtol=0, atol=0)  # the scale is exact either way
    return xq_triton, scale_triton


def check_two_launch(out, x, wq, w_scale, bias):
    """|out - (quant + ptpc_scaled_mm)| within fp32 reordering of the sum plus one output rounding."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = quantize(x2)
    ref = ptpc_scaled_mm_torch(xq, xs, wq, w_scale, bias, x.dtype).double()
    terms = (xq.double().abs() @ wq.double().abs().t()) * xs.double() * w_scale.double().t()
    if bias is not None:
        terms = terms + bias.double().abs()
    bound = 1e-5 * terms + 2 * EPS[x.dtype] * ref.abs() + 1e-30
    got = out.reshape(ref.shape).double()
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], wq.shape[0])
    excess = (got - ref).abs() - bound
    assert excess.max() <= 0, f"max |out - ref| over bound by {excess.max().item():.3g}"


def make(M, N, K, dtype, bias=True, special_rows=True):
    """Fresh randn x (a zero row and a 1000x-outlier row when M >= 3), a per-channel fp8 weight."""
    x = torch.randn(M, K, device=DEVICE)
    if special_rows and M >= 3:
        x[1] = 0.0
        x[2] *= 1000.0
    wq, w_scale = quantize_weight_per_channel(torch.randn(N, K, device=DEVICE))
    b = torch.randn(N, device=DEVICE).to(dtype) if bias else None
    return x.to(dtype), wq, w_scale, b


@pytest.mark.parametrize("M,use_dot", [(1, False), (1, True), (3, False), (3, True), (16, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_quant_plus_scaled_mm(M, dtype, use_dot):
    """K = 100 (not a multiple of BLOCK_K), N = 17 (odd, not a multiple of BLOCK_N)."""
    x, wq, w_scale, b = make(M, 17, 100, dtype, bias=M != 3)
    out = fused.ptpc_linear_small_m_launch(x, wq, w_scale, b, use_dot=use_dot)
    check_two_launch(out, x, wq, w_scale, b)
    if M >= 3:  # the zero row is the bias (or 0): scale at the floor, q = 0
        torch.testing.assert_close(out[1], b if b is not None else torch.zeros_like(out[1]))


@pytest.mark.parametrize("use_dot", [False, True])
def test_grid_exact_rows_equal_torch_provider(use_dot):
    """Rows on the fp8 grid (amax = fp8_max * 2^-7): the interpreter's cast is exact, so the
    fused kernel matches the torch provider of ptpc_linear itself."""
    fmax = fp8_max()
    x, wq, w_scale, b = make(4, 24, 72, torch.float32)
    grid = (torch.randn(4, 72) * 64).clamp(-fmax, fmax).to(wq.dtype).float()
    grid[:, 0] = fmax
    x = (grid * 2.0**-7).to(DEVICE)
    x[3] = 0.0
    out = fused.ptpc_linear_small_m_launch(x, wq, w_scale, b, use_dot=use_dot)
    with use_kernels("torch"):
        ref = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def division_sensitive_row(K, amax=3.7):
    """A row of amax `amax` holding values next to fp8 rounding midpoints whose fp8 rounding
    differs between x / scale (per_token_quant_fp8's division) and x * (1 / scale)."""
    fp8 = quantize_weight_per_channel(torch.randn(1, 1))[0].dtype
    scale = per_token_quant_fp8_torch(torch.tensor([[amax]]))[1]
    grid = torch.arange(0, 127, dtype=torch.uint8).view(fp8).float()  # non-negative finite fp8 values
    near_mid = ((grid[1:] + grid[:-1]) / 2) * scale[0]
    near_mid = torch.cat([near_mid, near_mid.nextafter(near_mid + 1), near_mid.nextafter(near_mid - 1)])
    near_mid = near_mid[near_mid < amax]
    differ = near_mid[(near_mid / scale[0]).to(fp8) != (near_mid * (1 / scale[0])).to(fp8)]
    row = torch.rand(K) * amax
    row[0] = amax
    row[1:1 + differ.numel()] = differ * torch.where(torch.arange(differ.numel()) % 2 == 0, 1.0, -1.0)
    assert differ.numel() >= 8 and K > differ.numel()
    return row


@pytest.mark.parametrize("use_dot", [False, True])
def test_exact_division_not_reciprocal(use_dot):
    """Quantization divides like per_token_quant_fp8 (IEEE x / scale), not x * (1 / scale)."""
    x, wq, w_scale, b = make(2, 24, 64, torch.float32)
    x[0], x[1] = division_sensitive_row(64), -division_sensitive_row(64, amax=0.02)
    out = fused.ptpc_linear_small_m_launch(x, wq, w_scale, b, use_dot=use_dot)
    check_two_launch(out, x, wq, w_scale, b)


@pytest.mark.parametrize("use_dot", [False, True])
def test_amax_pass_loops_over_k(use_dot, monkeypatch):
    """The amax pass in chunks (AMAX_TILE // BLOCK_M columns): row maxima in the last chunk."""
    monkeypatch.setattr(fused, "AMAX_TILE", 256)  # chunks of 64 (GEMV, 4 rows) / 32 (tl.dot, 16 rows)
    x, wq, w_scale, b = make(3, 17, 200, torch.float32)
    x[:, 190] = 50.0 * torch.randn(3)
    out = fused.ptpc_linear_small_m_launch(x, wq, w_scale, b, use_dot=use_dot)
    check_two_launch(out, x, wq, w_scale, b)


@pytest.mark.parametrize("use_dot", [False, True])
@pytest.mark.parametrize("split_k,K", [(2, 100), (3, 64)])
def test_split_k(use_dot, split_k, K):
    """Split-K partials + last-arriver reduction in the same launch; counters back at zero.
    K = 64 with 3 splits of 32: the last slice is empty (masked)."""
    config = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": split_k}
    for bias in (True, False):
        x, wq, w_scale, b = make(4, 40, K, torch.float32, bias=bias)
        out = fused.ptpc_linear_small_m_launch(x, wq, w_scale, b, config=config, use_dot=use_dot)
        check_two_launch(out, x, wq, w_scale, b)
    assert all(int(c.abs().sum()) == 0 for c in ptpc_gemm_small_m._COUNTERS.values())


def test_leading_dims_and_strided_x():
    x, wq, w_scale, b = make(6, 24, 48, torch.float32)
    x3 = torch.cat([x, x], dim=1)[:, ::2].reshape(2, 3, 48)  # stride 2 along K
    assert not x3.is_contiguous()
    out = fused.ptpc_linear_small_m_launch(x3, wq, w_scale, b)
    assert out.shape == (2, 3, 24)
    check_two_launch(out, x3, wq, w_scale, b)


def test_empty_shapes():
    _, wq, w_scale, b = make(1, 8, 16, torch.float32)
    assert fused.ptpc_linear_small_m_launch(torch.randn(0, 16), wq, w_scale, b).shape == (0, 8)
    wq0, ws0 = wq[:, :0], w_scale
    out = fused.ptpc_linear_small_m_launch(torch.randn(3, 0), wq0, ws0, b)
    torch.testing.assert_close(out, b.expand(3, 8))


@pytest.mark.parametrize("what, exc, msg", [
    ("too many rows", ValueError, "M <= 16"),
    ("bf16 weight", TypeError, "e4m3 fp8"),
    ("K mismatch", ValueError, "K = 31"),
    ("GEMV above its M", ValueError, "GEMV path takes M <= 4"),
])
def test_bad_input(what, exc, msg):
    x, wq, w_scale, _ = make(2, 8, 32, torch.float32)
    args = {"too many rows": (torch.randn(17, 32), wq, w_scale),
            "bf16 weight": (x, wq.to(torch.bfloat16), w_scale),
            "K mismatch": (torch.randn(2, 31), wq, w_scale),
            "GEMV above its M": (torch.randn(5, 32), wq, w_scale)}[what]
    with pytest.raises(exc, match=msg):
        fused.ptpc_linear_small_m_launch(*args, use_dot=False if what == "GEMV above its M" else None)


def test_ptpc_linear_triton_provider_switch(monkeypatch):
    """FUSED_SMALL_M_MAX = 0: the two launches; > 0: the fused kernel up to that many rows."""
    calls = []
    real = fused.ptpc_linear_small_m_launch
    monkeypatch.setattr(fused, "ptpc_linear_small_m_launch", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, wq, w_scale, b = make(3, 17, 40, torch.float32)
    with use_kernels("triton"):
        torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, b)
        assert calls == []
        monkeypatch.setattr(ptpc_linear_mod, "FUSED_SMALL_M_MAX", 16)
        out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, b)
        assert calls == [1]
        torch.ops.rocm_attn.ptpc_linear(torch.randn(17, 40, device=DEVICE), wq, w_scale, b)  # M > 16
        assert calls == [1]
    check_two_launch(out, x, wq, w_scale, b)


def test_autotune_candidates():
    """The autotuner (GPU) sees GEMV configs only at M <= GEMV_MAX_M and within the register
    budget, and always some tl.dot configs; tl.dot tiles have >= 16 rows."""
    at_1 = fused._prune(fused.DOT_CONFIGS + fused.GEMV_CONFIGS, {"M": 1})
    at_4 = fused._prune(fused.DOT_CONFIGS + fused.GEMV_CONFIGS, {"M": 4})
    at_5 = fused._prune(fused.DOT_CONFIGS + fused.GEMV_CONFIGS, {"M": 5})
    assert len(at_1) == len(fused.DOT_CONFIGS + fused.GEMV_CONFIGS)
    assert fused.DOT_CONFIGS[0] in at_4 and 0 < len(at_4) - len(fused.DOT_CONFIGS) < len(fused.GEMV_CONFIGS)
    assert at_5 == fused.DOT_CONFIGS
    assert fused._prune(fused.GEMV_CONFIGS, {"M": 5}) == []  # use_dot=False refuses M > 4 before this
    assert [fused._block_m(m, True) for m in (1, 3, 16)] == [16, 16, 16]
    assert [fused._block_m(m, False) for m in (1, 3, 4)] == [1, 4, 4]
