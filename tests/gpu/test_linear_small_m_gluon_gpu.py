"""The one-launch Gluon small-M linear (kernels/triton_kernels/ptpc_linear_small_m_gluon.py) on an sm_90 GPU:
against the fp64 product of the torch reference's quantized operands, against the two-launch linear, under CUDA
graph replay, with inf / NaN rows, and as what ptpc_linear runs at M <= 4 (8 at K <= 2048)."""
import pytest
import torch
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.per_token_quant import per_token_quant_fp8_torch
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m_gluon as one_launch

from rocm_attn.testing import fp8_gemm_exact, rel_err

pytestmark = pytest.mark.skipif(not one_launch.available(), reason="needs sm_90 and Gluon")
DEV = "cuda"


def inputs(M, K, N, dtype=torch.bfloat16, seed=0):
    """Fresh randn x with an outlier (60 in row 0) and, from M = 3, a zero row (row 1); a per-channel fp8 weight
    from randn; a bias."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(M, K, device=DEV, generator=gen).to(dtype)
    x[0, 3] = 60.0
    if M >= 3:
        x[1] = 0.0
    wq, ws = quantize_weight_per_channel(torch.randn(N, K, device=DEV, generator=gen).to(dtype) * 0.05)
    bias = torch.randn(N, device=DEV, generator=gen).to(dtype)
    return x, wq, ws, bias


def exact(x, wq, ws, bias):
    xq, xs = per_token_quant_fp8_torch(x)
    return fp8_gemm_exact(xq, xs, wq, ws, bias)


def run(x, wq, ws, bias, config):
    return one_launch.ptpc_linear_small_m_gluon(x, wq, ws, bias, 448.0, *config)


CONFIGS = {  # (K, N): (stages, split_k)
    (4096, 4096): (4, 4),  # ptpc_linear's default at K = 4096
    (4096, 1000): (4, 4),  # a partial last column tile
    (1024, 6144): (4, 1),  # no split-K
    (512, 4096): (2, 1),
    (14336, 4096): (8, 14),  # a slice count that is not a power of two
    (2048, 256): (8, 2),  # split 2 and more stages than the slice has boxes
}


@pytest.mark.parametrize("K, N", list(CONFIGS))
@pytest.mark.parametrize("M", [1, 3, 4, 16])
def test_matches_the_exact_product(K, N, M):
    """Within bf16 output rounding of the fp64 product of the torch reference's q and scales: the kernel quantizes
    x exactly as per_token_quant_fp8 does (a different q would show as ~2e-2). A zero row gives the bias."""
    if one_launch.shape_reason(M, K, torch.bfloat16, torch.float8_e4m3fn, *CONFIGS[K, N]):
        pytest.skip("a slice too large for this M")
    x, wq, ws, bias = inputs(M, K, N, seed=K + N + M)
    for b in (bias, None):
        y = run(x, wq, ws, b, CONFIGS[K, N])
        assert y.shape == (M, N) and y.dtype == torch.bfloat16
        assert rel_err(y, exact(x, wq, ws, b)) < 5e-3, (K, N, M, b is None)  # bf16 rounding: ~1.7e-3
        if M >= 3:
            assert torch.equal(y[1], b if b is not None else torch.zeros_like(y[1]))


def test_fp16_and_leading_dims():
    x, wq, ws, bias = inputs(2, 4096, 4096, dtype=torch.float16, seed=5)
    y = run(x.reshape(1, 2, 4096), wq, ws, bias, (4, 4))
    assert y.shape == (1, 2, 4096) and y.dtype == torch.float16
    assert rel_err(y.reshape(2, 4096), exact(x, wq, ws, bias)) < 5e-3


def test_inf_and_nan_rows_as_the_reference():
    """A row holding inf or NaN: NaN outputs where the torch reference has them, finite rows unchanged."""
    x, wq, ws, bias = inputs(4, 4096, 1024, seed=9)
    x[1, 10] = float("inf")
    x[2, 20] = float("nan")
    y = run(x, wq, ws, bias, (4, 4))
    ref = exact(x, wq, ws, bias)
    assert torch.equal(y.isnan(), ref.isnan()) and bool(y[1:3].isnan().all())
    assert rel_err(y[[0, 3]], ref[[0, 3]]) < 5e-3


def test_cuda_graph_replay_on_new_inputs():
    """Captured once, replayed on inputs rewritten after the capture (the split-K counters reset themselves)."""
    x, wq, ws, bias = inputs(4, 4096, 4096, seed=11)
    run(x, wq, ws, bias, (4, 4))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = run(x, wq, ws, bias, (4, 4))
    for rep in range(3):
        x.copy_(inputs(4, 4096, 4096, seed=100 + rep)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(y, exact(x, wq, ws, bias)) < 5e-3, rep


@pytest.mark.parametrize("M, K", [(1, 4096), (2, 4096), (4, 4096), (8, 4096), (8, 2048), (16, 2048), (6, 1024)])
def test_ptpc_linear_runs_it_where_the_gate_says(M, K, monkeypatch):
    """The op and an FP8Linear's eager plan run the one launch at M <= 4 (M <= 8 at K <= 2048; N = 4096) and the
    two launches above; both agree with the two launches (ROCM_ATTN_GLUON_SMALL_M=0) within bf16 rounding."""
    from rocm_attn.kernels import ptpc_linear as linear_mod

    x, wq, ws, bias = inputs(M, K, 4096, seed=20 + M)
    calls = []
    real = linear_mod._one_launch_linear
    monkeypatch.setattr(linear_mod, "_one_launch_linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(linear_mod, "_EAGER_PLANS", {})  # plans made by earlier tests hold the real function
    with torch.no_grad():
        for kernels in ("auto", "triton"):
            with use_kernels(kernels):
                y = torch.ops.rocm_attn.ptpc_linear(x, wq, ws, bias)
                y_eager = linear_mod.ptpc_linear_eager(x, wq, ws, bias)
                monkeypatch.setenv("ROCM_ATTN_GLUON_SMALL_M", "0")
                two = torch.ops.rocm_attn.ptpc_linear(x, wq, ws, bias)
                monkeypatch.delenv("ROCM_ATTN_GLUON_SMALL_M")
            assert torch.equal(y, y_eager) and rel_err(y, two) < 5e-3
            assert rel_err(y, exact(x, wq, ws, bias)) < 5e-3
    assert len(calls) == (4 if M <= linear_mod.one_launch_max_m(K) else 0)
