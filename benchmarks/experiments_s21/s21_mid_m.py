"""Session 21: the Gluon precise GEMM's tiles at mid M (64 < M < 1024), against cuBLASLt and bf16.

    python benchmarks/experiments_s21/s21_mid_m.py --out $OUT/mid_m.json [--ms 128,256] [--shapes 4096x1024]

For each Llama-3-8B shape (or --shapes) and M: every tile shape (128 x 64 or 128 x 128, one or two per
program) of the Gluon GEMM once (commit 52e8cd5's version of this script also split K), then the best of them,
cuBLASLt's precise rowwise GEMM, bf16 F.linear and today's ptpc_linear (auto) in 3 interleaved rounds
(medians), all with bench_linear's rotated input copies and CUDA-graph replays. Writes JSON as it goes.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import LLAMA_KN, bench, input_copies  # noqa: E402
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gg  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.testing import fp8_gemm_exact, rel_err  # noqa: E402

# stages that fill shared memory: A 16 KB + B halves x half_n x 128 bytes per stage
STAGES = {(1, 128): 6, (2, 128): 4, (1, 64): 8, (2, 64): 6}


def gluon(halves, half_n=128):
    stages = STAGES[halves, half_n]

    def fn(xq, xs, wq, ws):
        out = torch.empty(xq.shape[0], wq.shape[0], device="cuda", dtype=torch.bfloat16)
        return gg.launch(xq, xs, wq, ws, None, out, halves=halves, stages=stages, group_m=16, half_n=half_n)
    return fn


def cublas(xq, xs, wq, ws):
    return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)


def timed(fn, tensors):
    sets = input_copies(tensors)
    return bench(lambda: [fn(*s) for s in sets]) * 1000 / len(sets)  # us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="128,256,512")
    ap.add_argument("--shapes", default="", help="K,N pairs as KxN,KxN (default: the four Llama shapes)")
    args = ap.parse_args()
    ops = torch.ops.rocm_attn
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    t0 = time.time()
    shapes = [tuple(map(int, p.split("x"))) for p in args.shapes.split(",")] if args.shapes else LLAMA_KN
    for K, N in shapes:
        for M in map(int, args.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
            wq, ws = quantize_weight_per_channel(w)
            xq, xs = ops.per_token_quant_fp8(x)
            ref = fp8_gemm_exact(xq, xs, wq, ws)
            cands = {}
            for halves, half_n in STAGES:
                fn = gluon(halves, half_n)
                err = rel_err(fn(xq, xs, wq, ws), ref)
                cands[f"n{half_n}_h{halves}"] = dict(us=timed(fn, (xq, xs, wq, ws)), rel_err=err)
            cands["cublas"] = dict(us=timed(cublas, (xq, xs, wq, ws)),
                                   rel_err=rel_err(cublas(xq, xs, wq, ws), ref))
            best = min((k for k in cands if k != "cublas"), key=lambda k: cands[k]["us"])
            hn, h = (int(part[1:]) for part in best.split("_"))  # e.g. n64_h1
            best_fn = gluon(h, hn)

            def pair(x, wq, ws, best_fn=best_fn):  # what ptpc_linear would run with the best split
                q, sc = ops.per_token_quant_fp8(x)
                return best_fn(q, sc, wq, ws)

            variants = {"bf16": (F.linear, (x, w)), "cublas": (cublas, (xq, xs, wq, ws)),
                        "gluon_best": (best_fn, (xq, xs, wq, ws)), "quant_plus_best": (pair, (x, wq, ws)),
                        "ptpc_linear_now": (ops.ptpc_linear, (x, wq, ws))}
            samples = {k: [] for k in variants}
            for _ in range(3):
                for k, (fn, ts) in variants.items():
                    samples[k].append(timed(fn, ts))
            med = {k: statistics.median(v) for k, v in samples.items()}
            row = dict(K=K, N=N, M=M, candidates=cands, best=best, ab_us=med, ab_raw=samples,
                       best_vs_cublas=med["cublas"] / med["gluon_best"],
                       quant_plus_best_vs_bf16=med["bf16"] / med["quant_plus_best"],
                       now_vs_bf16=med["bf16"] / med["ptpc_linear_now"],
                       narrow_rule=gg.takes_narrow_tiles(M, N, gg.sm_count(x.device)))
            results["rows"].append(row)
            results["seconds"] = time.time() - t0
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
            top = sorted(cands.items(), key=lambda kv: kv[1]["us"])[:4]
            print(f"K={K} N={N} M={M}: " + " ".join(f"{k}={v['us']:.1f}" for k, v in top)
                  + " | A/B us: " + " ".join(f"{k}={v:.1f}" for k, v in med.items())
                  + f" | best/cublas {row['best_vs_cublas']:.3f}x,"
                  f" quant+best vs bf16 {row['quant_plus_best_vs_bf16']:.3f}x"
                  f" (now {row['now_vs_bf16']:.3f}x)",
                  flush=True)


if __name__ == "__main__":
    main()
