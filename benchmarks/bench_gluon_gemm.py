"""Gluon warp-specialized precise FP8 GEMM vs cuBLASLt (GPU only, sm_90): is a hand-scheduled promotion faster?

    python benchmarks/bench_gluon_gemm.py --out results/gluon_gemm.json      # ~1 min on an H100

The kernel (kernels/triton_kernels/ptpc_gemm_gluon.py) adds each 128-wide K block's wgmma sum into an
fp32 accumulator, as cuBLASLt's precise mode and our Triton GEMM (max_num_imprecise_acc=128) do, but with two
consumer warpgroups and a TMA producer warp so one group's fp32 adds overlap the other's MMAs. It is an
experiment, not a provider: kernels.ptpc_scaled_mm does not call it (benchmarks/RESULTS.md, Session 11).
Checks first: each tile configuration against the fp64 product of the same fp8 operands (odd shapes, bias),
and the all-positive worst case next to cuBLASLt precise / fast. Then times (CUDA graphs, median) bf16
F.linear, torch._scaled_mm precise and fast, our Triton GEMM, and the Gluon kernel's tile configurations on
Llama-3-8B shapes, in one run. Writes JSON and prints a markdown table (x = bf16 time / this).
"""
import argparse
import json
import os
import pathlib
import sys

import torch
import triton

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gluon_gemm  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_gemm import ptpc_gemm_launch  # noqa: E402

from rocm_attn.testing import fp8_gemm_exact as exact  # noqa: E402
from rocm_attn.testing import fp8_gemm_operands, rel_err  # noqa: E402

SHAPES = [(4096, 4096, 4096), (8192, 4096, 14336), (8192, 6144, 4096), (8192, 28672, 4096), (1024, 4096, 4096),
          (4096, 4096, 14336), (8192, 4096, 4096)]
CONFIGS = [dict(halves=2, stages=3, group_m=16, out_buffers=2), dict(halves=2, stages=4, group_m=16),
           dict(halves=2, stages=4, group_m=8), dict(halves=2, stages=4, group_m=16, consumer_regs=240),
           dict(halves=1, stages=6, group_m=16)]


def operands(M, N, K, positive=False, seed=0):
    return fp8_gemm_operands(M, N, K, positive, generator=torch.Generator(device="cuda").manual_seed(seed))


def run_gluon(xq, xs, wq, ws, bias=None, **config):
    out = torch.empty(xq.shape[0], wq.shape[0], device="cuda", dtype=torch.bfloat16)
    return gluon_gemm.launch(xq, xs, wq, ws, bias, out, **config)


def cublaslt(xq, xs, wq, ws, fast):
    return torch._scaled_mm(xq, wq.T, scale_a=xs, scale_b=ws.T, out_dtype=torch.bfloat16, use_fast_accum=fast)


def config_name(c):
    return (f"gluon_h{c['halves']}_s{c['stages']}_g{c['group_m']}_r{c.get('consumer_regs', 232)}"
            f"_o{c.get('out_buffers', 1)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="three shapes")
    args = p.parse_args()
    if not gluon_gemm.available():
        sys.exit("bench_gluon_gemm: needs an sm_90 GPU and a Triton with Gluon")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "checks": [], "rows": []}
    for M, N, K in [(200, 320, 4160), (1000, 1000, 2048), (257, 6144, 4096)]:
        for c in CONFIGS[:2] + CONFIGS[4:]:
            xq, xs, wq, ws = operands(M, N, K)
            bias = torch.randn(N, device="cuda", dtype=torch.bfloat16) if M == 200 else None
            err = rel_err(run_gluon(xq, xs, wq, ws, bias, **c), exact(xq, xs, wq, ws, bias))
            result["checks"].append(dict(M=M, N=N, K=K, config=config_name(c), rel_err=err))
            assert err < 1e-2, (M, N, K, c, err)  # bf16 output rounding is ~2e-3
    for K in (4096, 14336):  # all-positive operands: the worst case for a truncating accumulator
        xq, xs, wq, ws = operands(1024, 1024, K, positive=True)
        ref = exact(xq, xs, wq, ws)
        result["checks"].append(dict(M=1024, N=1024, K=K, inputs="all positive",
                                     gluon=rel_err(run_gluon(xq, xs, wq, ws), ref),
                                     cublaslt_precise=rel_err(cublaslt(xq, xs, wq, ws, False), ref),
                                     cublaslt_fast=rel_err(cublaslt(xq, xs, wq, ws, True), ref)))
    for check in result["checks"]:
        print(check)

    def bench(fn):
        return float(triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median")) * 1e3

    for M, N, K in SHAPES[:3] if args.quick else SHAPES:
        xq, xs, wq, ws = operands(M, N, K)
        xb = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wb = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        row = dict(M=M, N=N, K=K, us={})
        row["us"]["bf16"] = bench(lambda: torch.nn.functional.linear(xb, wb))
        row["us"]["cublaslt_precise"] = bench(lambda: cublaslt(xq, xs, wq, ws, False))
        row["us"]["cublaslt_fast"] = bench(lambda: cublaslt(xq, xs, wq, ws, True))
        row["us"]["triton_prec128"] = bench(lambda: ptpc_gemm_launch(xq, xs, wq, ws, None, torch.bfloat16))
        for c in CONFIGS:
            row["us"][config_name(c)] = bench(lambda: run_gluon(xq, xs, wq, ws, **c))
        result["rows"].append(row)
        print({k: round(v, 1) for k, v in row["us"].items()}, flush=True)

    names = list(result["rows"][0]["us"])[1:]
    print("\n| M | N | K | bf16 us | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for r in result["rows"]:
        cells = [f"{r['us']['bf16'] / r['us'][n]:.2f}x" for n in names]
        print(f"| {r['M']} | {r['N']} | {r['K']} | {r['us']['bf16']:.1f} | " + " | ".join(cells) + " |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
