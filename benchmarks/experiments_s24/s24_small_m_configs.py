"""Session 24: the small-M GEMM alone under other tile configs, against a pure read of the same weight bytes.

    python benchmarks/experiments_s24/s24_small_m_configs.py --out $OUT/small_m_configs.json [--rounds 5]

Each config is checked bit for bit against the TUNED one on fresh randn inputs before it is timed. `read_floor`
is a Triton kernel that only sums the fp8 weight (each program a contiguous slice): what streaming these bytes
costs in this harness (CUDA-graph replays over copies beyond L2, bench_linear's round_robin).
"""
import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import round_robin_us  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch, tuned_config  # noqa: E402

FP8 = torch.float8_e4m3fn


@triton.jit
def _read_kernel(w_ptr, out_ptr, n_bytes, PER_PROG: tl.constexpr, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * PER_PROG
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(0, PER_PROG, BLOCK):
        offs = base + i + tl.arange(0, BLOCK)
        acc += tl.load(w_ptr + offs, mask=offs < n_bytes, other=0).to(tl.int32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, 0))


def read_floor(wq, out, progs=132, block=8192):
    w = wq.view(torch.uint8).reshape(-1)
    per = triton.cdiv(triton.cdiv(w.numel(), progs), block) * block
    _read_kernel[(triton.cdiv(w.numel(), per),)](w, out, w.numel(), PER_PROG=per, BLOCK=block, num_warps=8,
                                                 num_stages=3)
    return out


def cfg(bn, bk, sk, warps, stages):
    return {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "num_warps": warps, "num_stages": stages}


CONFIGS = {
    "n32_k256_s4": cfg(32, 256, 1, 4, 4), "n32_k256_s6": cfg(32, 256, 1, 4, 6), "n32_k256_s8": cfg(32, 256, 1, 4, 8),
    "n32_k512_s4": cfg(32, 512, 1, 4, 4), "n32_k512_w8_s4": cfg(32, 512, 1, 8, 4),
    "n16_k256_s6": cfg(16, 256, 1, 4, 6), "n16_k512_s4": cfg(16, 512, 1, 4, 4),
    "n32_k128_s8": cfg(32, 128, 1, 4, 8), "n32_k256_sk2_s4": cfg(32, 256, 2, 4, 4),
    "n64_k256_sk2_w8_s4": cfg(64, 256, 2, 8, 4), "n64_k128_w8_s6": cfg(64, 128, 1, 8, 6),
}
ROWS = [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 16), (14336, 4096, 16)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv), rows=[])
    for K, N, M in ROWS:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
        xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0)
        ref = ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16)
        variants, bad = {}, []
        for name, c in CONFIGS.items():
            if not torch.equal(ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16, config=c), ref):
                bad.append(name)
            variants[name] = (lambda xq, xs, wq, ws, c=c: ptpc_gemm_small_m_launch(
                xq, xs, wq, ws, None, torch.bfloat16, config=c), (xq, xs, wq, ws))
        out = torch.empty(1024, dtype=torch.int32, device="cuda")
        variants["read_floor"] = (lambda wq, out: read_floor(wq, out), (wq, out))
        variants["read_floor_264"] = (lambda wq, out: read_floor(wq, out, 264), (wq, out))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, tuned=tuned_config(M, N, K), not_equal=bad, us=us, samples_us=samples)
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, "not equal:", bad, {n: round(v, 2) for n, v in sorted(us.items(), key=lambda t: t[1])},
              flush=True)


if __name__ == "__main__":
    main()
