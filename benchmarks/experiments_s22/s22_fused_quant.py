"""Session 22: ptpc_linear with the quantization inside the Gluon GEMM (ptpc_gemm_gluon.linear_launch) against
today's two-kernel form (per_token_quant_fp8 + the fp8 GEMM) and bf16, at M >= 1024.

    python benchmarks/experiments_s22/s22_fused_quant.py --out $OUT/fused_quant.json [--rounds 3] [--quick]

First correctness (fresh randn inputs, bias, fp16, odd M): the fused result against the torch reference
(ptpc_linear's torch provider) and against today's triton path; the scales against the reference's, bit for
bit. Then, per shape, the variants timed round-robin (`--rounds`), CUDA-graph replays over input copies that
exceed L2 (bench_linear's helpers), medians kept. Writes JSON after every shape.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import bench, input_copies  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels import use_kernels  # noqa: E402
from rocm_attn.kernels.ptpc_linear import ptpc_linear_torch  # noqa: E402
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gg  # noqa: E402
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_scales_launch  # noqa: E402

SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
MS = [1024, 4096, 8192]


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def check():
    out = []
    for (M, K, N, dtype, bias) in [(1024, 4096, 4096, torch.bfloat16, False), (1000, 4096, 6144, torch.bfloat16, True),
                                   (3000, 14336, 4096, torch.bfloat16, False), (1024, 4096, 4096, torch.float16, True),
                                   (129, 512, 264, torch.bfloat16, True), (2048, 4096, 28672, torch.bfloat16, False)]:
        torch.manual_seed(M + K + N)
        x = torch.randn(M, K, device="cuda", dtype=dtype)
        x[3] *= 100  # an outlier row
        w = torch.randn(N, K, device="cuda", dtype=dtype) * 0.02
        b = torch.randn(N, device="cuda", dtype=dtype) if bias else None
        wq, ws = quantize_weight_per_channel(w)
        ref = ptpc_linear_torch(x, wq, ws, b)
        with use_kernels("triton"):
            today = torch.ops.rocm_attn.ptpc_linear(x, wq, ws, b)
        fused = gg.linear_launch(x, wq, ws, b)
        exact = (x.double() @ w.double().t() + (b.double() if bias else 0))
        s, inv = per_token_scales_launch(x, 448.0)
        _, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
        row = dict(M=M, K=K, N=N, dtype=str(dtype), bias=bias, fused_vs_ref=rel(fused, ref),
                   today_vs_ref=rel(today, ref), fused_vs_today=rel(fused, today),
                   fused_vs_fp64=rel(fused, exact), ref_vs_fp64=rel(ref, exact),
                   scales_equal=bool(torch.equal(s, s_ref.view(M, 1))),
                   inv_max_rel=float(((inv * s.view(M)) - 1).abs().max()),
                   finite=bool(torch.isfinite(fused).all()))
        print(row, flush=True)
        out.append(row)
    return out


def time_shape(K, N, M, rounds):
    from rocm_attn.kernels.ptpc_scaled_mm import ptpc_scaled_mm_torch  # noqa: F401

    ops = torch.ops.rocm_attn
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    wq, ws = quantize_weight_per_channel(w)
    xq, xs = ops.per_token_quant_fp8(x)
    wq_t, ws_t = wq.t(), ws.t()

    def cublas_linear(x, wq_t, ws_t):
        q, s = ops.per_token_quant_fp8(x)
        return torch._scaled_mm(q, wq_t, scale_a=s, scale_b=ws_t, out_dtype=torch.bfloat16)

    def gluon_mm(xq, xs, wq, ws):
        return gg.ptpc_gemm_gluon_launch(xq, xs, wq, ws, None, torch.bfloat16)

    variants = {
        "bf16": (F.linear, (x, w)),
        "ptpc_linear": (ops.ptpc_linear, (x, wq, ws)),
        "fused": (lambda x, wq, ws: gg.linear_launch(x, wq, ws, None), (x, wq, ws)),
        "fused_h2_s2_o1_x3": (lambda x, wq, ws: gg.linear_launch(x, wq, ws, None, 2, 2, 1, 3), (x, wq, ws)),
        "fused_h2_s2_o1_x2": (lambda x, wq, ws: gg.linear_launch(x, wq, ws, None, 2, 2, 1, 2), (x, wq, ws)),
        "fused_h1_s3_o1_x2": (lambda x, wq, ws: gg.linear_launch(x, wq, ws, None, 1, 3, 1, 2), (x, wq, ws)),
        "quant_gluon": (lambda x, wq, ws: gluon_mm(*ops.per_token_quant_fp8(x), wq, ws), (x, wq, ws)),
        "quant_cublas": (cublas_linear, (x, wq_t, ws_t)),
        "quant": (ops.per_token_quant_fp8, (x,)),
        "scales": (lambda x: per_token_scales_launch(x, 448.0), (x,)),
        "gluon_mm": (gluon_mm, (xq, xs, wq, ws)),
        "cublas_mm": (lambda q, s, wt, st: torch._scaled_mm(q, wt, scale_a=s, scale_b=st, out_dtype=torch.bfloat16),
                      (xq, xs, wq_t, ws_t)),
    }
    rotated = {name: (fn, input_copies(t)) for name, (fn, t) in variants.items()}
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, sets) in rotated.items():
            samples[name].append(bench(lambda fn=fn, sets=sets: [fn(*s) for s in sets]) / len(sets) * 1000)
    us = {name: statistics.median(v) for name, v in samples.items()}
    row = dict(K=K, N=N, M=M, us=us, samples_us=samples,
               vs_bf16={name: us["bf16"] / t for name, t in us.items() if name != "bf16"})
    del rotated
    torch.cuda.empty_cache()
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-check", action="store_true")
    a = p.parse_args()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
                  check=[] if a.no_check else check(), rows=[])
    json.dump(result, open(a.out, "w"), indent=1)
    shapes = SHAPES[1:2] + SHAPES[3:] if a.quick else SHAPES
    t0 = time.time()
    for K, N in shapes:
        for M in MS:
            row = time_shape(K, N, M, a.rounds)
            result["rows"].append(row)
            json.dump(result, open(a.out, "w"), indent=1)
            print(f"K={K} N={N} M={M} " + " ".join(f"{k}={v:.1f}" for k, v in row["us"].items())
                  + " | x bf16: " + " ".join(f"{k}={v:.3f}" for k, v in row["vs_bf16"].items()), flush=True)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
