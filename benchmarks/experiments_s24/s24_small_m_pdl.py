"""Session 24: the small-M linear (M <= 64) as a PDL pair, its weight asked into L2 while the quant runs.

    python benchmarks/experiments_s24/s24_small_m_pdl.py --out $OUT/small_m_pdl.json [--rounds 5]
        [--rows "4096,4096,1;..."]

The quant calls griddepcontrol.launch_dependents first; the small-M GEMM, launched with launch_pdl, waits
(griddepcontrol.wait) before its first read. `_s4`: the config TUNED had before Session 24 for K = 4096,
N = 4096 / 6144, M <= 16 (4 stages; now 6 at N = 4096). Earlier versions of this script (README) also timed
two variants of the kernel that were not kept: an L2 prefetch of the program's whole weight slice before the
wait, and the first 256-2048 bytes of each weight row loaded into registers before it. Checks: every variant == the plain pair bit for bit, eagerly and in a CUDA-graph replay on
fresh randn inputs. Timing: round-robin `--rounds` times, CUDA-graph replays over input copies beyond L2
(bench_linear's helpers), medians.
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
from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch  # noqa: E402

FP8 = torch.float8_e4m3fn


def linear(x, wq, ws, pdl, config=None):
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=pdl)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16, config=config, pdl=pdl)


S4 = {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 1, "num_warps": 4, "num_stages": 4}
VARIANTS = {  # name -> (pdl, config (None: TUNED's))
    "plain": (False, None),
    "pdl": (True, None),
    "plain_s4": (False, S4),  # TUNED's config before Session 24 at K = 4096, N = 4096 / 6144, M <= 16
    "pdl_s4": (True, S4),
}
ROWS = [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 1), (4096, 6144, 16), (4096, 28672, 1),
        (4096, 28672, 16), (14336, 4096, 1), (14336, 4096, 16), (4096, 4096, 64), (4096, 6144, 64),
        (14336, 4096, 64)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or ROWS
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 16), (14336, 4096, 16), (4096, 28672, 1), (4096, 6144, 64),
                    (4096, 4096, 7)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02)
        row = dict(K=K, N=N, M=M)
        for name, (pdl, c) in VARIANTS.items():
            try:
                ref = linear(x, wq, ws, False, c)
                row[f"{name}_eager_equal"] = bool(torch.equal(ref, linear(x, wq, ws, pdl, c)))
                g = torch.cuda.CUDAGraph()
                linear(x, wq, ws, pdl, c)
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    out_g = linear(x, wq, ws, pdl, c)
                x2 = torch.randn_like(x)
                x.copy_(x2)
                g.replay()
                torch.cuda.synchronize()
                row[f"{name}_graph_equal"] = bool(torch.equal(out_g, linear(x2, wq, ws, False, c)))
            except Exception as e:  # noqa: BLE001 (a config that does not fit: recorded, not timed)
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                print(K, N, M, name, row[f"{name}_error"], flush=True)
        print(K, N, M, "not equal:", [k for k, v in row.items() if v is False] or "none", flush=True)
        res["check"].append(row)
    json.dump(res, open(a.out, "w"), indent=1)
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0)
        variants = {"bf16": (F.linear, (x, w))}
        for name, (pdl, c) in VARIANTS.items():
            try:
                linear(x, wq, ws, pdl, c)
            except Exception:  # noqa: BLE001 (see the checks)
                continue
            variants[name] = (lambda x, wq, ws, pdl=pdl, c=c: linear(x, wq, ws, pdl, c), (x, wq, ws))
        variants["gemm_alone"] = (lambda xq, xs, wq, ws: ptpc_gemm_small_m_launch(xq, xs, wq, ws, None,
                                                                                  torch.bfloat16), (xq, xs, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 1) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
