"""Session 27: the one-launch Gluon small-M linear with the rows' scales shared among the split-K programs of a
column tile (kernels/triton_kernels/ptpc_linear_small_m_gluon.py, share_amax=True: each program takes the amax of
its own K slice, publishes it, and waits for the others' under a cooperative launch) against the same kernel reading
all of x per program (share_amax=False, the Session 26 kernel), the PDL pair and bf16 F.linear.

    python benchmarks/experiments_s27/s27_shared_amax.py --out $OUT/shared_amax.json [--rounds 5] [--checks-only]

Checks first (fresh randn x with an outlier, a zero row, inf / NaN rows; bias; 60 calls in a row; CUDA-graph
replays on new inputs): the kernel against the torch reference (ptpc_linear_torch: the same quantized operands, an
fp32 GEMM). Timing: bench_linear's round robin (CUDA-graph replays over input copies beyond L2), medians in us.
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


def pair(x, wq, ws, bias=None, pdl=True):
    c = tuned_config(x.shape[0], wq.shape[0], x.shape[1])
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=pdl)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, bias, torch.bfloat16, config=c, pdl=pdl)


def one(x, wq, ws, bias=None, share=False, stages=None, qcols=256):
    return G.ptpc_linear_small_m_gluon(x, wq, ws, bias, 448.0, stages=stages, share_amax=share, qcols=qcols)


def rel(a, b):
    a, b = a.float(), b.float()
    same_nan = bool((a.isnan() == b.isnan()).all())
    ok = ~(a.isnan() | b.isnan() | a.isinf() | b.isinf())
    return ((a[ok] - b[ok]).norm() / b[ok].norm().clamp_min(1e-30)).item(), same_nan


def fresh_x(M, K, special=False):
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    x[0, 7] = 40.0  # an outlier
    if M > 2:
        x[1] = 0.0  # a zero row
    if special and M > 4:
        x[2, 100] = float("inf")
        x[3, 3000 % K] = float("nan")
    return x


CHECKS = [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 5), (4096, 1000, 9), (2048, 4096, 16), (4096, 4096, 13),
          (4096, 6144, 16), (2048, 2048, 8)]


def mixed_sequence(res):
    """Calls of several M in a row on one stream: each must leave the amax slots zeroed for the next."""
    K, N = 4096, 4096
    wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
    worst, nan_same = 0.0, True
    xs = [fresh_x(M, K, special=True) for M in (16, 3, 9, 1, 16, 8, 2, 13)]
    outs = [one(x, wq, ws, None, True) for x in xs]
    for x, out in zip(xs, outs):
        r, same = rel(out, ptpc_linear_torch(x, wq, ws))
        worst, nan_same = max(worst, r), nan_same and same
    row = dict(kind="mixed_sequence", worst_rel=worst, nan_same=nan_same)
    print("check", row, flush=True)
    res["check"].append(row)


def checks(res):
    mixed_sequence(res)
    for K, N, M in CHECKS:
        for share, stages, qcols in [(True, 4, 256), (True, 6, 256)]:
            row = dict(K=K, N=N, M=M, share=share, stages=stages, qcols=qcols)
            try:
                x = fresh_x(M, K, special=True)
                wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
                bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
                out = one(x, wq, ws, bias, share, stages, qcols)
                ref = ptpc_linear_torch(x, wq, ws, bias)
                row["rel_vs_torch"], row["nan_same"] = rel(out, ref)
                row["zero_row_is_bias"] = bool((out[1] == bias).all()) if M > 2 else None
                outs = [one(x, wq, ws, None, share, stages, qcols) for _ in range(60)]  # flags reset each call
                ref0 = ptpc_linear_torch(x, wq, ws)
                row["repeat_max_rel"] = max(rel(o, ref0)[0] for o in outs)
                row["repeat_nan_same"] = all(rel(o, ref0)[1] for o in outs)
                g = torch.cuda.CUDAGraph()
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    out_g = one(x, wq, ws, None, share, stages, qcols)
                worst = 0.0
                for _ in range(3):
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
        (2048, 4096, 1), (2048, 4096, 16), (1024, 4096, 1), (1024, 4096, 4)]


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
        candidates = {"one": dict(), "share_s4_q256": dict(share=True, stages=4, qcols=256),
                      "share_s4_q128": dict(share=True, stages=4, qcols=128),
                      "share_s6_q256": dict(share=True, stages=6, qcols=256),
                      "share_s8_q256": dict(share=True, stages=8, qcols=256)}
        for name, kw in candidates.items():
            try:
                one(x, wq, ws, **kw)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                print(K, N, M, name, type(e).__name__, str(e)[:200], flush=True)
                continue
            variants[name] = (lambda x, wq, ws, kw=kw: one(x, wq, ws, **kw), (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
