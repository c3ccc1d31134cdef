"""The Gluon precise FP8 GEMM (an experiment, not a provider) still builds for sm_90 with this Triton.

No GPU here: the kernel is compiled offline for an sm_90 target (Triton's bundled ptxas), so a Gluon API
change that breaks it shows up in CI. Its numbers are checked on the GPU in tests/gpu/test_gluon_gemm_gpu.py.
The compile runs in a fresh process without TRITON_INTERPRET: in a process whose earlier tests ran kernels
under the interpreter, triton.language's builtins can be left patched to the interpreter's (Triton 3.9 does
not undo the patch a jit helper's call makes), and a real compile then fails; with an empty Triton cache
this test failed that way after the other kernel tests (the MLA build test does the same).
"""
import json
import os
import subprocess
import sys

import pytest
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gluon_gemm
from rocm_attn.testing import cubin_resource_usage

pytestmark = pytest.mark.skipif(not gluon_gemm.HAVE_GLUON, reason="this Triton has no Gluon")


def _compile(halves, stages, out_buffers, half_n=gluon_gemm.HALF_N):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl

    try:
        from triton.experimental.gluon._runtime import GluonASTSource
    except ImportError:
        sys.exit(3)  # the test skips
    a_layout = gl.NVMMASharedLayout.get_default_for([64, gluon_gemm.BLOCK_K], gl.float8e4nv)
    b_layout = gl.NVMMASharedLayout.get_default_for([half_n, gluon_gemm.BLOCK_K], gl.float8e4nv)
    c_layout = gl.NVMMASharedLayout.get_default_for([64, half_n], gl.bfloat16)
    signature = {
        "a_desc": f"tensordesc<fp8e4nv[64, {gluon_gemm.BLOCK_K}],{a_layout!r}>",
        "b_desc": f"tensordesc<fp8e4nv[{half_n}, {gluon_gemm.BLOCK_K}],{b_layout!r}>",
        "c_desc": f"tensordesc<bf16[64, {half_n}],{c_layout!r}>",
        "xs_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
    }
    constexprs = dict(HALVES=halves, STAGES=stages, GROUP_M=8, HAS_BIAS=True, CONSUMER_REGS=232,
                      C_BUFS=out_buffers, HALF_N=half_n)
    signature.update({name: "constexpr" for name in constexprs})
    src = GluonASTSource(gluon_gemm._ptpc_gemm_gluon_kernel, signature, constexprs, {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, maxnreg=168))


def build_report(halves, stages, out_buffers, half_n=gluon_gemm.HALF_N) -> dict:
    """Compile for sm_90 here (the fresh process's work); what the test checks."""
    kernel = _compile(halves, stages, out_buffers, half_n)
    ptx = kernel.asm["ptx"]
    report = dict(wgmma=ptx.count("wgmma.mma_async"), tma=ptx.count("cp.async.bulk.tensor"),
                  setmaxnreg="setmaxnreg" in ptx, shared=kernel.metadata.shared, regs=None,
                  pdl_wait=ptx.count("griddepcontrol.wait"))
    usage = cubin_resource_usage(kernel)
    if usage is not None:
        report["regs"] = usage["regs"]
    return report


@pytest.mark.parametrize("halves, stages, out_buffers, half_n",
                         [(1, 6, 1, 128), (2, 4, 1, 128), (2, 3, 2, 128), (1, 8, 1, 64)])
def test_builds_for_sm90(halves, stages, out_buffers, half_n):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__, str(halves), str(stages), str(out_buffers), str(half_n)],
                         capture_output=True, text=True, env=env)
    if run.returncode == 3:
        pytest.skip("this Triton cannot compile Gluon offline")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # two consumer warpgroups x HALVES accumulators x 4 k-steps (K = 32 each) of a 128-wide K block
    assert report["wgmma"] == 2 * halves * 4
    # loads (producer): A's two 64-row halves and B's halves; stores: one per output half in each consumer
    assert report["tma"] == 2 + halves + 2 * halves
    assert report["setmaxnreg"]  # the producer warp gives its registers to the consumers
    assert report["pdl_wait"] == 1  # the producer waits for a PDL predecessor before its first load
    assert report["shared"] <= 227 * 1024
    if report["regs"] is not None:
        assert report["regs"] <= 168  # 3 warpgroups x 128 threads fit 64K


def test_the_pdl_pair_only_where_it_was_measured_to_pay(monkeypatch):
    """pdl_pays on an H100 (132 SMs): the GEMM one round of tiles and K <= 8192, or M <= 128 at longer K;
    and ptpc_linear's gate around it (auto or forced triton, Gluon taking the GEMM, our Triton quant,
    ROCM_ATTN_PDL)."""
    import torch
    from rocm_attn.kernels import ptpc_linear as linear_mod
    from rocm_attn.kernels import use_kernels

    assert gluon_gemm.pdl_pays(1024, 4096, 4096, 132)  # 128 wide tiles
    assert gluon_gemm.pdl_pays(256, 4096, 4096, 132) and gluon_gemm.pdl_pays(128, 4096, 6144, 132)  # narrow
    assert not gluon_gemm.pdl_pays(1024, 14336, 4096, 132) and not gluon_gemm.pdl_pays(256, 14336, 4096, 132)
    assert gluon_gemm.pdl_pays(128, 14336, 4096, 132)
    assert not gluon_gemm.pdl_pays(4096, 4096, 4096, 132)  # 512 tiles
    assert not gluon_gemm.pdl_pays(1024, 4096, 28672, 132)
    assert not gluon_gemm.pdl_pays(1024, 4096, 6144, 132)  # 128 x 128 tiles: 384

    fp8 = torch.float8_e4m3fn
    monkeypatch.setattr(gluon_gemm, "available", lambda device=None: True)
    monkeypatch.setattr(gluon_gemm, "sm_count", lambda device: 132)
    monkeypatch.setattr(linear_mod, "fp8_dtype", lambda: fp8)
    quant_provider = ["triton"]
    monkeypatch.setattr(linear_mod, "select", lambda op, device, *args: (quant_provider[0], None))

    def takes(M=1024, K=4096, N=4096, fast_accum=False, out_dtype=torch.bfloat16):
        x2, wq = torch.empty(M, K, dtype=torch.bfloat16), torch.empty(N, K, dtype=fp8)
        return linear_mod._pdl_pair(x2, wq, out_dtype, fast_accum) == "gluon"

    assert takes() and takes(M=256)
    assert not takes(K=14336) and not takes(M=4096) and not takes(M=64)  # M <= 64: the small-M kernel
    assert not takes(fast_accum=True) and not takes(out_dtype=torch.float32)
    with use_kernels("torch"):
        assert not takes()
    with use_kernels("triton"):
        assert takes()
    monkeypatch.setenv("ROCM_ATTN_PDL", "0")
    assert not takes()
    monkeypatch.delenv("ROCM_ATTN_PDL")
    quant_provider[0] = "torch"
    assert not takes()


def test_not_available_without_a_hopper_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert not gluon_gemm.available()


def test_the_triton_provider_takes_it_only_where_it_was_measured(monkeypatch):
    """ptpc_scaled_mm's gate: precise accumulation, M >= GLUON_MIN_M (or mid M with narrow tiles filling the
    SMs), e4m3fn, bf16/fp16 out, TMA-friendly K and N, an sm_90 GPU (faked here, with an H100's 132 SMs: the
    gate's own logic is what is tested)."""
    import torch
    from rocm_attn.kernels import ptpc_scaled_mm as mm

    monkeypatch.setattr(gluon_gemm, "available", lambda device=None: True)
    fp8 = torch.float8_e4m3fn

    def takes(M, K=4096, N=4096, dtype=fp8, out_dtype=torch.bfloat16, fast_accum=False):
        return mm.gluon_takes(torch.empty(M, K, dtype=dtype), torch.empty(N, K, dtype=dtype), out_dtype, fast_accum)

    monkeypatch.setattr(gluon_gemm, "sm_count", lambda device: 132)  # an H100's
    assert takes(mm.GLUON_MIN_M) and takes(8192, 14336, 4096) and takes(4096, out_dtype=torch.float16)
    assert not takes(mm.GLUON_MIN_M - 1)  # below the measured crossover: cuBLASLt / the tiled GEMM
    # mid M: where the 128 x 64 tiles fit in one round on the SMs
    assert takes(128) and takes(256) and takes(128, K=14336) and takes(100, N=6144) and takes(256, N=1024)
    assert not takes(mm.SMALL_M_MAX)  # the small-M kernel's
    assert not takes(512) and not takes(256, N=6144) and not takes(128, N=28672)  # more than one round
    assert not takes(4096, fast_accum=True)  # the Gluon GEMM is precise-only
    assert not takes(4096, out_dtype=torch.float32)
    assert not takes(4096, K=4104) and not takes(4096, N=4100)  # TMA's 16-byte row strides
    assert not takes(4096, dtype=torch.float8_e4m3fnuz)
    monkeypatch.setattr(gluon_gemm, "available", lambda device=None: False)
    assert not takes(4096)


if __name__ == "__main__":
    print(json.dumps(build_report(*map(int, sys.argv[1:5]))))
