"""The one-launch Gluon small-M linear (kernels/triton_kernels/ptpc_linear_small_m_gluon.py) on CPU: it builds for
sm_90 with this Triton, in the order that is its point (the weight's TMA loads issued before x is read), and
ptpc_linear's gate takes it only where it was measured faster. Its numbers are checked on the GPU in
tests/gpu/test_linear_small_m_gluon_gpu.py.

The compile runs in a fresh process without TRITON_INTERPRET (test_ptpc_gemm_gluon.py says why).
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m_gluon as one_launch
from rocm_attn.testing import cubin_resource_usage

pytestmark = pytest.mark.skipif(not one_launch.HAVE_GLUON, reason="this Triton has no Gluon")
FP8 = torch.float8_e4m3fn


def _compile(M, K, stages, split_k):
    import triton
    from triton.backends.compiler import GPUTarget

    try:
        from triton.experimental.gluon._runtime import GluonASTSource
    except ImportError:
        sys.exit(3)  # the test skips
    mrows, mp, ks, amax_cols = one_launch.shapes(M, K, split_k)
    w_layout, xq_layout, xa_layout, xq_reg_layout = one_launch._layouts(mrows, mp, ks, amax_cols)
    signature = {"x_ptr": "*bf16", "w_desc": f"tensordesc<fp8e4nv[64, 128],{w_layout!r}>", "ws_ptr": "*fp32",
                 "bias_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32",
                 "N": "i32", "stride_xm": "i32", "stride_om": "i32"}
    constexprs = dict(K=K, MROWS=mrows, MP=mp, AMAX_COLS=amax_cols, STAGES=stages, SPLIT_K=split_k, FP8_MAX=448.0,
                      INV_FP8_MAX=1 / 448, SCALE_FLOOR=1 / (448 * 512), HAS_BIAS=True, XA_LAYOUT=xa_layout,
                      XQ_REG_LAYOUT=xq_reg_layout, XQ_LAYOUT=xq_layout)
    signature.update({name: "constexpr" for name in constexprs})
    src = GluonASTSource(one_launch._ptpc_linear_small_m_gluon_kernel, signature, constexprs, {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def build_report(M, K, stages, split_k) -> dict:
    """Compile for sm_90 here (the fresh process's work); what the test checks."""
    kernel = _compile(M, K, stages, split_k)
    lines = kernel.asm["ptx"].splitlines()
    tma = [i for i, line in enumerate(lines) if "cp.async.bulk.tensor" in line]
    loads = [i for i, line in enumerate(lines) if "ld.global" in line]
    report = dict(wgmma=sum("wgmma.mma_async" in line for line in lines), tma=len(tma),
                  tma_before_x=sum(i < loads[0] for i in tma), shared=kernel.metadata.shared,
                  local=sum(".local" in line for line in lines), regs=None)
    usage = cubin_resource_usage(kernel)
    if usage is not None:
        report["regs"] = usage["regs"]
    return report


@pytest.mark.parametrize("M, K, stages, split_k", [(1, 4096, 4, 4), (4, 4096, 4, 4), (16, 4096, 4, 4),
                                                   (2, 1024, 4, 1), (8, 2048, 4, 4), (3, 14336, 8, 14)])
def test_builds_for_sm90_weight_loads_first(M, K, stages, split_k):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__, str(M), str(K), str(stages), str(split_k)],
                         capture_output=True, text=True, env=env)
    if run.returncode == 3:
        pytest.skip("this Triton cannot compile Gluon offline")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    boxes = K // split_k // one_launch.BLOCK_K
    assert report["wgmma"] == boxes * one_launch.BLOCK_K // 32  # one k32 wgmma per 32 columns of each box
    assert report["tma"] == boxes  # the ring's first STAGES loads, then one refill per later box
    # the point of the kernel: the first STAGES weight loads are issued before the first read of x
    assert report["tma_before_x"] == min(stages, boxes)
    assert report["local"] == 0  # no spills
    assert report["shared"] <= one_launch.SMEM_LIMIT
    if report["regs"] is not None:
        assert report["regs"] <= 255


def test_shape_reason_and_default_config():
    bf16 = torch.bfloat16
    assert one_launch.default_config(4096) == (4, 4) and one_launch.default_config(1024) == (4, 1)
    assert one_launch.default_config(2048) == (4, 4) and one_launch.default_config(512) == (4, 1)
    assert one_launch.default_config(3072) == (4, 3) and one_launch.default_config(14336) == (4, 14)
    for M in (1, 4, 16):
        assert one_launch.shape_reason(M, 4096, bf16, FP8, 4, 4) is None
    assert one_launch.shape_reason(1, 4096, torch.float16, FP8, 4, 4) is None
    assert "rows" in one_launch.shape_reason(0, 4096, bf16, FP8, 4, 4)
    assert "rows" in one_launch.shape_reason(17, 4096, bf16, FP8, 4, 4)
    assert "bf16 / fp16" in one_launch.shape_reason(1, 4096, torch.float32, FP8, 4, 4)
    assert "float8_e4m3fn" in one_launch.shape_reason(1, 4096, bf16, torch.float8_e5m2, 4, 4)
    assert "power-of-two slice" in one_launch.shape_reason(1, 576, bf16, FP8, 4, 1)  # SmolLM2's K
    assert "power-of-two slice" in one_launch.shape_reason(1, 4096, bf16, FP8, 4, 3)
    assert "raise split_k" in one_launch.shape_reason(16, 4096, bf16, FP8, 4, 2)  # 16 x 2048 in registers
    assert "shared memory" in one_launch.shape_reason(1, 4096, bf16, FP8, 32, 2)
    with pytest.raises(ValueError, match="needs an sm_90 GPU"):
        one_launch.ptpc_linear_small_m_gluon(torch.randn(1, 4096, dtype=bf16), torch.empty(64, 4096, dtype=FP8),
                                             torch.ones(64, 1), None, 448.0)


def test_ptpc_linear_takes_it_only_where_measured(monkeypatch):
    """ptpc_linear's gate (_one_launch_takes): M <= 4 (M <= 8 at K <= 2048, in one round of 2 programs per SM) and
    K <= 4096 where the small-M GEMM would run after our Triton quant (auto's table or forced triton), precise
    accumulation, bf16 / fp16 x, e4m3fn weights, a GPU with Gluon (faked here), ROCM_ATTN_GLUON_SMALL_M not 0. The
    provider then launches it; on this CPU it never applies."""
    from rocm_attn.kernels import ptpc_linear as linear_mod
    from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon

    def takes(M, K=4096, N=4096, dtype=torch.bfloat16, wdtype=FP8, fast=False, device="cuda"):
        x2 = SimpleNamespace(shape=(M, K), device=torch.device(device))  # all the gate reads of x
        return linear_mod._one_launch_takes(x2, torch.empty(N, K, dtype=wdtype), dtype, fast)

    assert not takes(1, device="cpu")
    monkeypatch.setattr(one_launch, "available", lambda device: True)
    monkeypatch.setattr(ptpc_gemm_gluon, "sm_count", lambda device: 132)  # an H100
    quant_provider = ["triton"]
    monkeypatch.setattr(linear_mod, "select", lambda op, device, *args: (quant_provider[0], None))
    assert takes(1) and takes(2) and takes(4) and takes(4, K=1024) and takes(1, N=28672) and takes(1, N=6144)
    assert takes(1, dtype=torch.float16)
    assert not takes(8) and not takes(16)  # measured slower than the PDL pair from M = 8 at K = 4096
    assert takes(8, K=2048) and takes(8, K=1024) and takes(5, K=2048)  # faster up to M = 8 at K <= 2048
    assert not takes(16, K=2048) and not takes(9, K=1024)  # not at M = 16
    # above 4 rows only in one round of 2 programs per SM: 64 column tiles x 4 slices = 256 <= 264, 512 > 264
    assert takes(8, K=2048, N=4096) and not takes(8, K=2048, N=8192) and takes(4, K=2048, N=8192)
    assert not takes(1, K=14336)  # measured slower at K = 14336
    assert not takes(1, K=576)  # no power-of-two slice of whole 128-wide boxes
    assert not takes(0) and not takes(1, fast=True) and not takes(1, dtype=torch.float32)
    assert not takes(1, wdtype=torch.float8_e5m2)
    with use_kernels("torch"):
        assert not takes(1)
    with use_kernels("triton"):
        assert takes(1)
    monkeypatch.setenv("ROCM_ATTN_GLUON_SMALL_M", "0")
    assert not takes(1)
    monkeypatch.delenv("ROCM_ATTN_GLUON_SMALL_M")
    quant_provider[0] = "torch"
    assert not takes(1)


if __name__ == "__main__":
    print(json.dumps(build_report(*map(int, sys.argv[1:5]))))
