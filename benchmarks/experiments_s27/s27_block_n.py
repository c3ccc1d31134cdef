"""Session 27: the one-launch Gluon small-M linear (kernels/triton_kernels/ptpc_linear_small_m_gluon.py) with 128
weight rows per program (8 warps, two warpgroups) instead of 64: half the programs, so half the redundant reads of x
for the rows' scales and half the redundant quantization, against the 64-row kernel, the PDL pair and bf16 F.linear.

    python benchmarks/experiments_s27/s27_block_n.py --out $OUT/block_n.json [--rounds 5] [--checks-only]

Checks first (fresh randn x with an outlier, a zero row, inf / NaN rows; bias; N = 1000; CUDA-graph replay on new
inputs) against the torch reference. Timing: bench_linear's round robin (CUDA-graph replays over input copies beyond
L2), medians in us.
"""
import argparse
import json
import os
import sys
import traceback

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
# name -> (block_n, stages, split_k)
CONFIGS = {"one": (64, 4, 4), "b128_s4_k4": (128, 4, 4), "b128_s6_k4": (128, 6, 4), "b128_s4_k2": (128, 4, 2),
           "b128_s4_k8": (128, 4, 8), "b128_s8_k2": (128, 8, 2)}


def pair(x, wq, ws, bias=None, pdl=True):
    c = tuned_config(x.shape[0], wq.shape[0], x.shape[1])
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=pdl)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, bias, torch.bfloat16, config=c, pdl=pdl)


def one(x, wq, ws, bias=None, cfg=(64, 4, 4)):
    block_n, stages, split_k = cfg
    return G.ptpc_linear_small_m_gluon(x, wq, ws, bias, 448.0, stages=stages, split_k=split_k, block_n=block_n)


def fits(M, K, cfg):
    block_n, stages, split_k = cfg
    mrows, mp, ks, _ = G.shapes(M, K, split_k)
    smem = stages * block_n * G.BLOCK_K + ks * mp + 1024
    return K % (G.BLOCK_K * split_k) == 0 and mp * ks <= G.SLICE_ELEMENTS * block_n // 64 and smem <= G.SMEM_LIMIT


def rel(a, b):
    a, b = a.float(), b.float()
    same_nan = bool((a.isnan() == b.isnan()).all())
    ok = ~(a.isnan() | b.isnan() | a.isinf() | b.isinf())
    return ((a[ok] - b[ok]).norm() / b[ok].norm().clamp_min(1e-30)).item(), same_nan


def fresh_x(M, K, special=False):
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    x[0, 7] = 40.0
    if M > 2:
        x[1] = 0.0
    if special and M > 4:
        x[2, 100] = float("inf")
        x[3, 3000 % K] = float("nan")
    return x


def checks(res):
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 5), (4096, 1000, 9), (2048, 4096, 8),
                    (4096, 4160, 3)]:
        for name, cfg in CONFIGS.items():
            if name == "one" or not fits(M, K, cfg):
                continue
            row = dict(K=K, N=N, M=M, cfg=name)
            try:
                x = fresh_x(M, K, special=True)
                wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
                bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
                out = one(x, wq, ws, bias, cfg)
                row["rel_vs_torch"], row["nan_same"] = rel(out, ptpc_linear_torch(x, wq, ws, bias))
                row["zero_row_is_bias"] = bool((out[1] == bias).all()) if M > 2 else None
                g = torch.cuda.CUDAGraph()
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    out_g = one(x, wq, ws, None, cfg)
                worst = 0.0
                for _ in range(2):
                    x.copy_(fresh_x(M, K))
                    g.replay()
                    torch.cuda.synchronize()
                    worst = max(worst, rel(out_g, ptpc_linear_torch(x, wq, ws))[0])
                row["graph_rel_vs_torch"] = worst
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                traceback.print_exc()
            print("check", row, flush=True)
            res["check"].append(row)


ROWS = [(4096, 4096, 1), (4096, 4096, 2), (4096, 4096, 4), (4096, 4096, 8), (4096, 4096, 16),
        (4096, 6144, 1), (4096, 6144, 4), (4096, 6144, 8), (4096, 6144, 16),
        (4096, 28672, 1), (4096, 28672, 4), (14336, 4096, 1), (14336, 4096, 4)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="")
    p.add_argument("--checks-only", action="store_true")
    p.add_argument("--skip-checks", action="store_true")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or ROWS
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    if not a.skip_checks:
        checks(res)
        json.dump(res, open(a.out, "w"), indent=1)
    if a.checks_only:
        return
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        variants = {"bf16": (F.linear, (x, w)), "pair_pdl": (pair, (x, wq, ws))}
        configs = dict(CONFIGS)
        if K == 14336:  # 1024- or 2048-column slices
            configs = {"one_k14": (64, 8, 14), "b128_s4_k14": (128, 4, 14), "b128_s4_k7": (128, 4, 7)}
        for name, cfg in configs.items():
            if not fits(M, K, cfg):
                continue
            try:
                one(x, wq, ws, None, cfg)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                print(K, N, M, name, type(e).__name__, str(e)[:200], flush=True)
                continue
            variants[name] = (lambda x, wq, ws, cfg=cfg: one(x, wq, ws, None, cfg), (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
