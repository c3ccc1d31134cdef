"""Offline sm_90 compile check of the prefill kernels (no GPU needed): registers, stack (spills), shared
memory, wgmma / cp.async / vector-load counts per config.   python benchmarks/sm90_compile_check.py"""
import os
import re
import subprocess
import tempfile
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")

def check(fn, signature, constexprs, num_warps, num_stages, attrs=None, label=""):
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs or {})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = k.asm["ptx"]
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    r = subprocess.run([os.path.join(os.path.dirname(PTXAS), "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True)
    regs = re.search(r"REG:(\d+)", r.stdout)
    spill = re.search(r"STACK:(\d+)", r.stdout)
    wgmma = ptx.count("wgmma.mma_async")
    cpasync = ptx.count("cp.async.cg") + ptx.count("cp.async.ca"); ldv = len(re.findall(r"ld\.global\.v", ptx)); lds = len(re.findall(r"ld\.global\.b16", ptx)) ; tma = ptx.count("cp.async.bulk.tensor")
    print(f"{label:50s} regs={regs.group(1) if regs else '?'} stack={spill.group(1) if spill else '?'} "
          f"smem={k.metadata.shared} wgmma={wgmma} cp.async={cpasync} tma={tma} ld.v={ldv} ld.b16={lds}", flush=True)
    return k

import rocm_attn.kernels.triton_kernels.flash_attention as fa
import triton

def flash(bm, bn, w, s, causal=True, **extra):
    fn = fa._flash_attn_fwd_kernel
    names = fn.arg_names
    cexpr = dict(GROUP=4, HEAD_D=128, HEAD_DV=128, BLOCK_D=128, BLOCK_D2=0, BLOCK_DV=128, BLOCK_M=bm, BLOCK_N=bn,
                 IS_VARLEN=True, HAS_QPOS=False, STORE_LSE=True, CAUSAL=causal, WINDOW=False, SOFTCAP=False,
                 HAS_MASK=False, BOOL_MASK=False, HAS_KEY_VALID=False, DOT_PREC="tf32")
    cexpr.update(extra)
    cexpr = {k: v for k, v in cexpr.items() if k in names}
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in cexpr: sig[n] = "constexpr"
        elif n in ("Q", "K", "V", "O"): sig[n] = "*bf16"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("LSE",): sig[n] = "*fp32"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("MASK",): sig[n] = "*bf16"
        elif n in ("KEY_VALID",): sig[n] = "*i1"
        elif n in ("CU_Q", "CU_K", "QPOS"): sig[n] = "*i32"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("qk_scale", "softcap_scale", "softcap_out"): sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n.startswith("stride_") and not n.startswith("stride_m"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return check(fn, sig, cexpr, w, s, attrs, label=f"flash bm{bm} bn{bn} w{w} s{s} causal={causal} {extra}")

import rocm_attn.kernels.triton_kernels.unified_attention as ua

def unified(shuffled, bm=128, tile=64, w=8, s=3, label=""):
    fn = ua._unified_attention_kernel
    names = fn.arg_names
    cexpr = dict(QPKV=4, HEAD_DIM=128, HEAD_DIM_P=128, PAGE=16, BLOCK_M=bm, BLOCK_Q=bm // 4, TILE=tile,
                 SHUFFLED=shuffled, X=8 if shuffled else 1, USE_WINDOW=False, USE_SOFTCAP=False, NUM_SEGMENTS=1,
                 DOT_PRECISION="tf32")
    cexpr = {k: v for k, v in cexpr.items() if k in names}
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in cexpr: sig[n] = "constexpr"
        elif n in ("out_ptr", "q_ptr", "k_ptr", "v_ptr"): sig[n] = "*bf16"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n.startswith("part_"): sig[n] = "*fp32"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("qsl_ptr", "seq_lens_ptr", "bt_ptr"): sig[n] = "*i32"; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in ("scale", "scale_log2", "softcap"): sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return check(fn, sig, cexpr, w, s, attrs, label=f"unified shuffled={shuffled} bm{bm} tile{tile} w{w} s{s} {label}")


if __name__ == "__main__":
    for cfg in [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3)]:
        flash(*cfg)
    # HF padding as a [B, Sk] key-valid vector (dense layout, as the compiled graphs call it)
    flash(128, 64, 8, 3, IS_VARLEN=False, STORE_LSE=False, HAS_KEY_VALID=True)
    flash(128, 64, 8, 3, IS_VARLEN=False, STORE_LSE=False, HAS_MASK=True, BOOL_MASK=True)
    for shuffled in (False, True):
        for bm, tile, w, s in [(128, 64, 8, 3), (128, 128, 8, 2)]:
            unified(shuffled, bm, tile, w, s)
