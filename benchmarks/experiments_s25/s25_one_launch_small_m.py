"""Session 25: ptpc_linear at M <= 16 in one launch (kernels/triton_kernels/ptpc_linear_small_m.py: every
program computes the rows' scales, then quantizes x tiles on the fly in the small-M GEMM's loop) against
today's PDL pair (per_token_quant_fp8 + ptpc_gemm_small_m) and bf16 F.linear.

    python benchmarks/experiments_s25/s25_one_launch_small_m.py --out $OUT/one_launch.json [--rounds 5]

Run it at commit e284b08 (`git checkout e284b08`): the kernel code it times was removed in the commit after.

Checks: the one launch == the pair with the same config bit for bit, eagerly and in a CUDA-graph replay on
fresh randn inputs. Timing: round-robin `--rounds` times, CUDA-graph replays over input copies beyond L2
(bench_linear's helpers), medians in us.
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
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch, tuned_config  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_linear_small_m import ptpc_linear_small_m_launch  # noqa: E402

FP8 = torch.float8_e4m3fn


def pair(x, wq, ws, c, pdl=True):
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=pdl)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16, config=c, pdl=pdl)


def one(x, wq, ws, c):
    return ptpc_linear_small_m_launch(x, wq, ws, None, 448.0, c)


def cfg(bn, bk, sk, w, s):
    return {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "num_warps": w, "num_stages": s}


CANDIDATES = {
    "c32_256_s4": cfg(32, 256, 1, 4, 4), "c32_256_s6": cfg(32, 256, 1, 4, 6), "c16_256_s6": cfg(16, 256, 1, 4, 6),
    "c32_512_s3": cfg(32, 512, 1, 4, 3), "c32_256_k2_s4": cfg(32, 256, 2, 4, 4), "c64_256_k2_s4": cfg(64, 256, 2, 4, 4),
    "c32_128_s8": cfg(32, 128, 1, 4, 8),
}
ROWS = [(4096, 4096, 1), (4096, 6144, 1), (4096, 4096, 2), (4096, 4096, 4), (4096, 4096, 8), (4096, 4096, 16),
        (4096, 6144, 16), (14336, 4096, 1), (4096, 28672, 1), (14336, 4096, 16)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or ROWS
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 16), (14336, 4096, 1), (4096, 28672, 1), (4096, 6144, 7)]:
        row = dict(K=K, N=N, M=M)
        for name, c in [("tuned", tuned_config(M, N, K))] + list(CANDIDATES.items())[:2] + [
                ("k2", CANDIDATES["c32_256_k2_s4"])]:
            try:
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                x[0, 5] = 30.0
                wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
                ref = pair(x, wq, ws, c, pdl=False)
                row[f"{name}_eager_equal"] = bool(torch.equal(ref, one(x, wq, ws, c)))
                g = torch.cuda.CUDAGraph()
                one(x, wq, ws, c)
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    out_g = one(x, wq, ws, c)
                x.copy_(torch.randn_like(x))
                g.replay()
                torch.cuda.synchronize()
                row[f"{name}_graph_equal"] = bool(torch.equal(out_g, pair(x, wq, ws, c, pdl=False)))
            except Exception as e:  # noqa: BLE001
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(K, N, M, row, flush=True)
        res["check"].append(row)
    json.dump(res, open(a.out, "w"), indent=1)
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0)
        tuned = tuned_config(M, N, K)
        variants = {"bf16": (F.linear, (x, w)),
                    "pair_pdl": (lambda x, wq, ws: pair(x, wq, ws, tuned), (x, wq, ws)),
                    "gemm_alone": (lambda xq, xs, wq, ws: ptpc_gemm_small_m_launch(
                        xq, xs, wq, ws, None, torch.bfloat16, config=tuned), (xq, xs, wq, ws))}
        for name, c in [("one_tuned", tuned)] + [("one_" + n, c) for n, c in CANDIDATES.items()]:
            try:
                one(x, wq, ws, c)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                print(K, N, M, name, type(e).__name__, str(e)[:200], flush=True)
                continue
            variants[name] = (lambda x, wq, ws, c=c: one(x, wq, ws, c), (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
