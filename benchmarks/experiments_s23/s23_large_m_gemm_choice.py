"""Session 23: at M >= 4096, is the linear faster with cuBLASLt's precise GEMM than with the Gluon one?

    python benchmarks/experiments_s23/s23_large_m_gemm_choice.py --out $OUT/large_m_gemm_choice.json [--rounds 5]

bench_linear's "GEMM alone" columns put cuBLASLt ahead of the Gluon GEMM at K = N = 4096, M = 8192 and N = 28672,
M >= 4096 in four runs, yet ptpc_linear (quant + Gluon) ran faster than either GEMM alone at N = 28672, M = 8192:
GEMMs replayed back to back run power-capped, so the GEMM-alone columns may not rank the GEMMs inside the linear.
This times the whole linear both ways: bf16 F.linear, ptpc_linear (auto: our quant + the Gluon GEMM), and our quant
+ torch._scaled_mm (cuBLASLt, precise), round-robin, CUDA-graph replays over inputs beyond L2, medians.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import round_robin_us  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402

ROWS = [(4096, 4096, 4096), (4096, 4096, 8192), (4096, 28672, 4096), (4096, 28672, 8192), (4096, 6144, 4096),
        (4096, 6144, 8192), (14336, 4096, 4096), (14336, 4096, 8192)]


def quant_cublas(x, wq_t, ws_t):
    xq, xs = torch.ops.rocm_attn.per_token_quant_fp8(x)
    return torch._scaled_mm(xq, wq_t, scale_a=xs, scale_b=ws_t, out_dtype=torch.bfloat16)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv), rows=[])
    for K, N, M in ROWS:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        a_out, b_out = torch.ops.rocm_attn.ptpc_linear(x, wq, ws), quant_cublas(x, wq.t(), ws.t())
        rel = float((a_out.float() - b_out.float()).norm() / b_out.float().norm())
        variants = {"bf16": (F.linear, (x, w)),
                    "ptpc_linear_gluon": (torch.ops.rocm_attn.ptpc_linear, (x, wq, ws)),
                    "quant_cublaslt": (quant_cublas, (x, wq.t(), ws.t()))}
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, rel_diff=rel,
                   x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 1) for n, v in us.items()}, {n: round(v, 3) for n, v in row["x_bf16"].items()},
              f"rel diff {rel:.1e}", flush=True)
        del x, w, wq, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
