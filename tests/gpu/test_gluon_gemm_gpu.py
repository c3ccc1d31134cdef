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
@pytest.mark.parametrize("config", [dict(halves=2, stages=4), dict(halves=1, stages=6, group_m=16)])
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
