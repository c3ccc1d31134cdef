"""Session 26: ptpc_linear at M <= 16 in one Gluon launch (kernels/triton_kernels/ptpc_linear_small_m_gluon.py:
each program starts its weight stream with TMA, then computes the rows' scales and its slice of q while the weight
arrives) against the PDL pair (per_token_quant_fp8 + ptpc_gemm_small_m), the GEMM alone and bf16 F.linear.
The v3 run also timed a Gluon PDL pair ("gpair": the quant, then a pre-quantized mode of the same kernel issuing
its weight loads before griddepcontrol.wait) and that GEMM alone ("galone"); that mode is at commit 9005ae1 and was
removed after (it lost to the Triton pair).

    python benchmarks/experiments_s26/s26_gluon_one_launch.py --out $OUT/gluon_one_launch.json [--rounds 5]

Checks first (fresh randn inputs with an outlier and a zero row; eager and CUDA-graph replay with new inputs): the
one launch against the torch reference (ptpc_linear_torch: the same quantized operands, an fp32 GEMM) and against
the pair. Timing: round-robin `--rounds` times, CUDA-graph replays over input copies beyond L2 (bench_linear's
helpers), medians in us.
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
CONFIGS = [(8, 2), (4, 4), (4, 8), (2, 8), (4, 7), (8, 14)]  # (stages, split_k) of the one launch


def pair(x, wq, ws, bias=None, pdl=True):
    c = tuned_config(x.shape[0], wq.shape[0], x.shape[1])
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=pdl)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, bias, torch.bfloat16, config=c, pdl=pdl)


def one(x, wq, ws, stages, split_k, bias=None):
    return G.ptpc_linear_small_m_gluon(x, wq, ws, bias, 448.0, stages=stages, split_k=split_k)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def fresh_x(M, K):
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    x[0, 7] = 40.0  # an outlier
    if M > 2:
        x[1] = 0.0  # a zero row
    return x


def fits(K, M, stages, split_k):
    x = torch.empty(M, K, device="cuda", dtype=torch.bfloat16)
    wq = torch.empty(64, K, device="cuda", dtype=FP8)
    return G.unsupported_reason(x, wq, stages, split_k) is None


def checks(res):
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 5), (14336, 4096, 3), (4096, 1000, 9),
                    (1024, 4096, 16)]:
        for stages, split_k in [(4, 4), (8, 2), (4, 8), (8, 14)]:
            if not fits(K, M, stages, split_k):
                continue
            fn = one
            row = dict(kind="one", K=K, N=N, M=M, stages=stages, split_k=split_k)
            try:
                x = fresh_x(M, K)
                wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
                bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
                out = fn(x, wq, ws, stages, split_k, bias)
                ref = ptpc_linear_torch(x, wq, ws, bias)
                row["rel_vs_torch"] = rel(out, ref)
                row["rel_vs_pair"] = rel(out, pair(x, wq, ws, bias, pdl=False))
                row["zero_row_zero"] = bool((out[1] == bias).all()) if M > 2 else None
                g = torch.cuda.CUDAGraph()
                fn(x, wq, ws, stages, split_k)
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    out_g = fn(x, wq, ws, stages, split_k)
                for _ in range(2):
                    x.copy_(fresh_x(M, K))
                    g.replay()
                    torch.cuda.synchronize()
                    row["graph_rel_vs_torch"] = max(row.get("graph_rel_vs_torch", 0), rel(out_g, ptpc_linear_torch(x, wq, ws)))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                traceback.print_exc()
            print("check", row, flush=True)
            res["check"].append(row)


ROWS = [(4096, 4096, 1), (4096, 4096, 2), (4096, 4096, 4), (4096, 4096, 8), (4096, 4096, 16), (4096, 6144, 1), (4096, 6144, 16), (14336, 4096, 1), (14336, 4096, 16),
        (4096, 28672, 1), (4096, 28672, 16)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="")
    p.add_argument("--skip-checks", action="store_true")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or ROWS
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    if not a.skip_checks:
        checks(res)
    json.dump(res, open(a.out, "w"), indent=1)
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0)
        tuned = tuned_config(M, N, K)
        variants = {"bf16": (F.linear, (x, w)),
                    "pair_pdl": (pair, (x, wq, ws)),
                    "gemm_alone": (lambda xq, xs, wq, ws: ptpc_gemm_small_m_launch(
                        xq, xs, wq, ws, None, torch.bfloat16, config=tuned), (xq, xs, wq, ws))}
        for stages, split_k in CONFIGS:
            if not fits(K, M, stages, split_k):
                continue
            try:
                one(x, wq, ws, stages, split_k)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                print(K, N, M, stages, split_k, type(e).__name__, str(e)[:200], flush=True)
                continue
            variants[f"one_s{stages}_k{split_k}"] = (lambda x, wq, ws, s=stages, k=split_k: one(x, wq, ws, s, k),
                                                     (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
