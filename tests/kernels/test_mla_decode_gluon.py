"""The Gluon MLA decode (kernels/triton_kernels/mla_decode_gluon.py) without a GPU: it still builds for sm_90
with this Triton (compiled offline with Triton's bundled ptxas: shared memory, registers, no spills, the
wgmma / TMA counts of its design), and off an sm_90 GPU the launcher neither offers nor runs it.
Its numbers are checked on the GPU in tests/gpu/test_mla_decode_gpu.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from rocm_attn.kernels.triton_kernels import mla_decode as md
from rocm_attn.kernels.triton_kernels import mla_decode_gluon as mg

from rocm_attn.testing import cubin_resource_usage, make_latent_cache

pytestmark = pytest.mark.skipif(not mg.HAVE_GLUON, reason="this Triton has no Gluon")


def _compile(L=512, R=64):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl

    try:
        from triton.experimental.gluon._runtime import GluonASTSource
    except ImportError:
        sys.exit(3)  # the test skips

    def desc(rows, cols):
        layout = gl.NVMMASharedLayout.get_default_for([rows, cols], gl.bfloat16)
        return f"tensordesc<bf16[{rows}, {cols}],{layout!r}>"

    ints = ["stride_bt", "page", "stride_ob", "stride_oh", "stride_lse_h", "stride_mo_b", "stride_mo_h",
            "stride_mo_s", "stride_ml_b", "stride_ml_h", "num_heads"]
    signature = {"q_half_desc": desc(64, L // 2), "q_rope_desc": desc(64, R),
                 "kv_half_desc": desc(64, L // 2), "k_rope_desc": desc(64, R), "seq_lens_ptr": "*i32",
                 "block_table_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32", "mid_o_ptr": "*fp32",
                 "mid_lse_ptr": "*fp32", "qk_scale": "fp32", **{name: "i32" for name in ints}}
    signature = {name: signature[name] for name in mg._mla_decode_gluon_kernel.arg_names if name in signature}
    constexprs = dict(NUM_STAGES=mg.STAGES, CONSUMER_REGS=mg.CONSUMER_REGS)
    signature.update({name: "constexpr" for name in constexprs})
    src = GluonASTSource(mg._mla_decode_gluon_kernel, signature, constexprs, {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, maxnreg=168))


def build_report() -> dict:
    """Compile for sm_90 here; what the test checks (run in a fresh process without TRITON_INTERPRET: in a
    process that imported Triton under the interpreter, Gluon's own jit helpers (gl.max, ...) are
    interpreter objects that a real compile refuses)."""
    kernel = _compile()
    ptx = kernel.asm["ptx"]
    report = dict(wgmma=ptx.count("wgmma.mma_async"), tma=ptx.count("cp.async.bulk.tensor"),
                  setmaxnreg="setmaxnreg" in ptx, shared=kernel.metadata.shared, regs=None, stack=None)
    usage = cubin_resource_usage(kernel)
    if usage is not None:
        report.update(usage)
    return report


def test_builds_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env)
    if run.returncode == 3:
        pytest.skip("this Triton cannot compile Gluon offline")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # group 0: scores = 16 + 16 + 4 k-steps (256 + 256 + 64 wide, K 16 each) and P @ V[:, :256] = 4 (64
    # tokens); group 1: P @ V[:, 256:] = 4
    assert report["wgmma"] == 36 + 4 + 4
    # q: 4 + 4 + 1 boxes of 64 columns (128-byte swizzle), each tile the same 9: loads in the producer only
    assert report["tma"] == 18
    assert report["setmaxnreg"]  # the producer warp gives its registers to the two warp groups
    assert report["shared"] <= 227 * 1024  # q + 2 stages of 64 latent rows + P: 224 KB
    if report["regs"] is not None:  # 3 warp groups x 128 threads fit 64K registers; nothing spilled
        assert report["regs"] <= 168 and report["stack"] == 0


def test_not_offered_or_run_off_an_sm90_gpu():
    if mg.available():
        pytest.skip("this machine has an sm_90 GPU")
    cache, table, _ = make_latent_cache([5], 512, 64, 64, dtype=torch.bfloat16)
    q = torch.randn(1, 128, 576, dtype=torch.bfloat16)
    assert "sm_90" in mg.unsupported_reason(q, cache, 512)
    assert not set(md.GLUON_CONFIGS) & set(md.candidate_configs(q, cache, 512))
    with pytest.raises(ValueError, match="needs an sm_90 GPU"):
        md.mla_decode_launch(q, cache, torch.tensor([5]), table, 0.1, 512, config=md.GLUON_CONFIGS[0])


def test_its_tile_is_fixed():
    cache, table, _ = make_latent_cache([5], 64, 16, 16)
    with pytest.raises(ValueError, match="gluon kernel's tile is fixed"):
        md.mla_decode_launch(torch.randn(1, 16, 80), cache, torch.tensor([5]), table, 0.3, 64,
                             config=md.DecodeConfig(32, 64, None, None, 4, 2, kernel="gluon"))
    with pytest.raises(ValueError, match="not one of gather, tma, gluon"):
        md.mla_decode_launch(torch.randn(1, 16, 80), cache, torch.tensor([5]), table, 0.3, 64,
                             config=md.DecodeConfig(16, 16, kernel="cutlass"))


def test_environment_switch_leaves_it_out(monkeypatch):
    cache, _, _ = make_latent_cache([5], 512, 64, 64, dtype=torch.bfloat16)
    q = torch.randn(1, 128, 576, dtype=torch.bfloat16)
    monkeypatch.setenv("ROCM_ATTN_GLUON_MLA", "0")
    assert "ROCM_ATTN_GLUON_MLA=0" in md.unsupported_reason(md.GLUON_CONFIGS[0], q, cache, 512)


if __name__ == "__main__":
    print(json.dumps(build_report()))
