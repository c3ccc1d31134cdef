"""Session 27: ptpc_linear at small K (1024, 2048) and M <= 16, where Session 26's gate takes the one-launch Gluon
linear at M <= 4 without having timed it: the one launch at several (stages, split_k) against the PDL pair and bf16
F.linear. Library code as committed (no switches).

    python benchmarks/experiments_s27/s27_small_k.py --out $OUT/small_k.json [--rounds 5]

Checks first: each one-launch config against the torch reference (fresh randn x with an outlier and a zero row,
bias). Timing: bench_linear's round robin (CUDA-graph replays over input copies beyond L2), medians in us.
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
from rocm_attn.kernels.ptpc_linear import ptpc_linear_torch  # noqa: E402
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch, tuned_config  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m_gluon as G  # noqa: E402

FP8 = torch.float8_e4m3fn
CONFIGS = [(4, 1), (4, 2), (4, 4), (4, 8)]  # (stages, split_k)


def pair(x, wq, ws, bias=None):
    c = tuned_config(x.shape[0], wq.shape[0], x.shape[1])
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=True)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, bias, torch.bfloat16, config=c, pdl=True)


def fits(M, K, stages, split_k):
    x = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
    return G.unsupported_reason(x, torch.empty(64, K, device="cuda", dtype=FP8), stages, split_k) is None


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               default_config={K: G.default_config(K) for K in (1024, 2048)}, check=[], rows=[])
    for K in (1024, 2048):
        for N in (2048, 4096):
            for M in (1, 2, 4, 8, 16):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                x[0, 7] = 40.0
                if M > 2:
                    x[1] = 0.0
                w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
                wq, ws = quantize_weight_per_channel(w)
                bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
                ref = ptpc_linear_torch(x, wq, ws, bias)
                variants = {"bf16": (F.linear, (x, w)), "pair_pdl": (pair, (x, wq, ws))}
                for stages, split_k in CONFIGS:
                    if not fits(M, K, stages, split_k):
                        continue
                    err = rel(G.ptpc_linear_small_m_gluon(x, wq, ws, bias, 448.0, stages, split_k), ref)
                    res["check"].append(dict(K=K, N=N, M=M, stages=stages, split_k=split_k, rel_vs_torch=err))
                    variants[f"one_s{stages}_k{split_k}"] = (
                        lambda x, wq, ws, s=stages, k=split_k: G.ptpc_linear_small_m_gluon(x, wq, ws, None, 448.0, s, k),
                        (x, wq, ws))
                samples, us = round_robin_us(variants, a.rounds)
                row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
                res["rows"].append(row)
                json.dump(res, open(a.out, "w"), indent=1)
                print(K, N, M, {n: round(v, 2) for n, v in us.items()}, "worst rel",
                      max([c["rel_vs_torch"] for c in res["check"] if (c["K"], c["N"], c["M"]) == (K, N, M)],
                          default=None), flush=True)


if __name__ == "__main__":
    main()
