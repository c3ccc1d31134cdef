"""Session 22: programmatic dependent launch (sm_90 PDL) between the quant and the Gluon GEMM at M >= 1024.

    python benchmarks/experiments_s22/s22_pdl_large_m.py --out $OUT/pdl_large_m.json [--rounds 5] [--mid]
        [--rows "14336,4096,128;14336,4096,256"]

The quant kernel calls griddepcontrol.launch_dependents first; the GEMM is launched with launch_pdl and its
producer waits (griddepcontrol.wait) before loading A. Checks: PDL on == off bit for bit, eagerly and in a
CUDA-graph replay, on fresh randn inputs. Timing: quant + GEMM with PDL off / on, bf16 F.linear, round-robin
`--rounds` times, CUDA-graph replays over input copies beyond L2 (bench_linear's helpers), medians.
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
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gg  # noqa: E402
from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch  # noqa: E402


def linear(x, wq, ws, pdl, trigger=None):
    """quant + Gluon GEMM; pdl: the GEMM launched with launch_pdl; trigger (default: pdl): the quant calls
    launch_dependents first (without it the GEMM is let in only as the quant exits)."""
    xq, xs = per_token_quant_fp8_launch(x, torch.float8_e4m3fn, 448.0,
                                        launch_dependents=pdl if trigger is None else trigger)
    return gg.ptpc_gemm_gluon_launch(xq, xs, wq, ws, None, torch.bfloat16, pdl=pdl)


ROWS = [(4096, 4096, M) for M in (1024, 4096, 8192)] + [(14336, 4096, M) for M in (1024, 4096, 8192)] + \
    [(4096, 6144, M) for M in (1024, 4096, 8192)] + [(4096, 28672, M) for M in (1024, 4096, 8192)]
MID_ROWS = [(4096, 4096, 128), (4096, 4096, 256), (4096, 4096, 512), (4096, 4096, 1024), (14336, 4096, 128),
            (14336, 4096, 1024), (4096, 6144, 128), (4096, 6144, 1024), (4096, 28672, 1024),
            (4096, 1024, 128)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mid", action="store_true", help="the M <= 1024 rows (MID_ROWS) instead of ROWS")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--rows", default="", help="K,N,M rows to time instead, separated by ';' (Session 23)")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or (MID_ROWS if a.mid else ROWS)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    for K, N, M in [] if a.no_check else [(4096, 4096, 1024), (14336, 4096, 1000), (4096, 6144, 2048)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
        off, on = linear(x, wq, ws, False), linear(x, wq, ws, True)
        g = torch.cuda.CUDAGraph()
        linear(x, wq, ws, True)
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            out_g = linear(x, wq, ws, True)
        x.copy_(torch.randn_like(x))  # fresh inputs for the replay
        g.replay()
        torch.cuda.synchronize()
        row = dict(K=K, N=N, M=M, eager_equal=bool(torch.equal(off, on)),
                   graph_equal=bool(torch.equal(out_g, linear(x, wq, ws, False))))
        print(row, flush=True)
        res["check"].append(row)
    json.dump(res, open(a.out, "w"), indent=1)
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        variants = {"bf16": (F.linear, (x, w)),
                    "pdl_off": (lambda x, wq, ws: linear(x, wq, ws, False), (x, wq, ws)),
                    "pdl_on": (lambda x, wq, ws: linear(x, wq, ws, True), (x, wq, ws)),
                    "pdl_no_trigger": (lambda x, wq, ws: linear(x, wq, ws, True, False), (x, wq, ws))}
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 1) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
