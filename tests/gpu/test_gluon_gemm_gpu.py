"""The Gluon precise FP8 GEMM (kernels/triton_kernels/ptpc_gemm_gluon.py, an experiment) on an sm_90 GPU:
against the fp64 product of the same fp8 operands, and as precise as cuBLASLt's precise mode on the
all-positive worst case (where fast accumulation loses 7-22%)."""
import pytest
import torch
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gluon_gemm

from rocm_attn.testing import fp8_gemm_exact as exact
from rocm_attn.testing import fp8_gemm_operands as operands
from rocm_attn.testing import rel_err

pytestmark = pytest.mark.skipif(not gluon_gemm.available(), reason="needs sm_90 and Gluon")


def run(xq, xs, wq, ws, bias=None, **config):
    out = torch.empty(xq.shape[0], wq.shape[0], device="cuda", dtype=torch.bfloat16)
    return gluon_gemm.launch(xq, xs, wq, ws, bias, out, **config)


@pytest.mark.parametrize("M, N, K", [(1, 128, 128), (200, 320, 4160), (1000, 1000, 2048), (4096, 4096, 4096),
                                     (257, 6144, 14336)])
@pytest.mark.parametrize("config", [dict(halves=2, stages=4), dict(halves=1, stages=6, group_m=16),
                                    dict(halves=2, stages=3, out_buffers=2),
                                    dict(halves=1, stages=8, half_n=64),  # the mid-M tiles
                                    dict(halves=2, stages=6, half_n=64, out_buffers=2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_the_exact_product(M, N, K, config, with_bias):
    xq, xs, wq, ws = operands(M, N, K)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16) if with_bias else None
    y = run(xq, xs, wq, ws, bias, **config)
    assert rel_err(y, exact(xq, xs, wq, ws, bias)) < 5e-3  # bf16 output rounding: ~1.7e-3


@pytest.mark.parametrize("K", [4096, 14336])
def test_as_precise_as_cublaslt_precise(K):
    xq, xs, wq, ws = operands(1024, 1024, K, positive=True)
    ref = exact(xq, xs, wq, ws)
    ours = rel_err(run(xq, xs, wq, ws), ref)
    precise = rel_err(torch._scaled_mm(xq, wq.T, scale_a=xs, scale_b=ws.T, out_dtype=torch.bfloat16), ref)
    fast = rel_err(torch._scaled_mm(xq, wq.T, scale_a=xs, scale_b=ws.T, out_dtype=torch.bfloat16,
                                    use_fast_accum=True), ref)
    assert ours <= 1.1 * precise and ours < 5e-3 < fast, (ours, precise, fast)


@pytest.mark.parametrize("M, N, K", [(1024, 6144, 4096), (1024, 4096, 4096), (2048, 4096, 14336),
                                     (128, 4096, 4096), (200, 4096, 14336), (65, 6144, 4096)])
def test_the_provider_entry(M, N, K):
    """ptpc_gemm_gluon_launch, what ptpc_scaled_mm's triton provider calls at M >= 1024 and at mid M: [M, 1]
    scales, a bias, the tile width pick_halves chooses (N = 6144 at M = 1024 takes the 128-wide tiles), and
    at mid M the narrow tiles."""
    from rocm_attn.kernels.ptpc_scaled_mm import gluon_takes
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_gluon import pick_halves, ptpc_gemm_gluon_launch

    xq, xs, wq, ws = operands(M, N, K)
    assert gluon_takes(xq, wq, torch.bfloat16, False)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    y = ptpc_gemm_gluon_launch(xq, xs, wq, ws, bias, torch.bfloat16)
    assert y.shape == (M, N) and y.dtype == torch.bfloat16
    assert rel_err(y, exact(xq, xs, wq, ws, bias)) < 5e-3
    assert pick_halves(1024, 6144, 132) == 1 and pick_halves(1024, 4096, 132) == 2
    assert gluon_gemm.takes_narrow_tiles(M, N, gluon_gemm.sm_count(xq.device)) == (M < 1024)


def test_repeat_calls_reuse_the_compiled_kernel_correctly():
    """After the first call of a specialization, launch() skips Triton's JIT and launches the cached
    compiled kernel: later calls (new data, new sizes with the same specialization, or sizes that change
    it: M = 1, M not a multiple of 16) must still be right."""
    for M in (64, 64, 48, 1, 17, 1, 64):
        xq, xs, wq, ws = operands(M, 256, 512)
        assert rel_err(run(xq, xs, wq, ws), exact(xq, xs, wq, ws)) < 5e-3, M
    assert len(gluon_gemm._COMPILED) >= 3  # M % 16 == 0, M == 1, neither


def test_bad_input_is_refused():
    xq, xs, wq, ws = operands(64, 128, 128)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        run(xq.to(torch.bfloat16), xs, wq, ws)
    with pytest.raises(ValueError, match="K % 16"):
        run(xq[:, :120].contiguous(), xs, wq[:, :120].contiguous(), ws)
    with pytest.raises(ValueError, match="out must be"):
        gluon_gemm.launch(xq, xs, wq, ws, None, torch.empty(64, 128, device="cuda", dtype=torch.float32))


@pytest.mark.parametrize("M, N, K", [(1024, 4096, 4096), (256, 4096, 4096), (128, 1024, 4096),
                                     (65, 6144, 4096),
                                     (300, 4096, 1008)])  # K: TMA wants 16-byte rows; not 128-aligned
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_pdl_pair_matches_two_plain_launches(M, N, K, with_bias):
    """ptpc_linear's PDL pair (the quant calls launch_dependents, the GEMM launched with launch_pdl waits for
    it): bit for bit the quant then the GEMM launched plainly, eagerly and replayed from a CUDA graph on
    inputs rewritten after the capture (fresh randn each time, never zeros)."""
    from rocm_attn.kernels.ptpc_linear import _pdl_gluon_linear
    from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel

    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.05)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16) if with_bias else None

    def plain(x):
        xq, xs = torch.ops.rocm_attn.per_token_quant_fp8(x)
        return gluon_gemm.ptpc_gemm_gluon_launch(xq, xs, wq, ws, bias, torch.bfloat16)

    assert torch.equal(_pdl_gluon_linear(x, wq, ws, bias), plain(x))
    graph = torch.cuda.CUDAGraph()
    _pdl_gluon_linear(x, wq, ws, bias)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        captured = _pdl_gluon_linear(x, wq, ws, bias)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, plain(x))


def test_ptpc_linear_takes_the_pdl_pair_where_it_pays(monkeypatch):
    """The op (and an FP8Linear's eager plan) run the PDL pair at K = N = 4096, M = 256 on an H100 / H200
    (132 SMs: 128 narrow tiles, one round) and give what ROCM_ATTN_PDL=0 gives; not at K = 14336."""
    from rocm_attn.kernels import ptpc_linear as linear_mod
    from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel

    if gluon_gemm.sm_count(torch.device("cuda")) < 128:
        pytest.skip("fewer SMs than an H100's: the one-round rule differs")
    for K, expected in [(4096, True), (14336, False)]:
        x = torch.randn(2, 128, K, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight_per_channel(torch.randn(4096, K, device="cuda", dtype=torch.bfloat16) * 0.05)
        assert (linear_mod._pdl_pair(x.reshape(256, K), wq, torch.bfloat16, False) == "gluon") is expected
        y = torch.ops.rocm_attn.ptpc_linear(x, wq, ws)
        y_eager = linear_mod.ptpc_linear_eager(x, wq, ws)
        monkeypatch.setenv("ROCM_ATTN_PDL", "0")
        assert linear_mod._pdl_pair(x.reshape(256, K), wq, torch.bfloat16, False) is None
        assert torch.equal(y, torch.ops.rocm_attn.ptpc_linear(x, wq, ws))
        assert torch.equal(y_eager, linear_mod.ptpc_linear_eager(x, wq, ws))
        monkeypatch.delenv("ROCM_ATTN_PDL")
