"""Session 25: ptpc_linear's small-M PDL pair chained to the kernel before it. The quant is launched with PDL
too (griddepcontrol.wait before it reads or writes) and the small-M GEMM calls launch_dependents first, so in
back-to-back linears the next call's quant is resident and waiting while this call's GEMM runs.

    python benchmarks/experiments_s25/s25_pdl_chain.py --out $OUT/pdl_chain.json [--rounds 5]

Run it at commit e284b08 (`git checkout e284b08`): the kernel code it times was removed in the commit after.

Variants: pair (today: quant -> GEMM as a PDL pair), chain (quant PDL-launched and waiting + GEMM triggering
early), chain_q (quant PDL-launched, GEMM not triggering), gemm_alone, bf16 F.linear; `*_sep`: the same with a
small unrelated torch kernel between calls (the chain's quant then follows a kernel that never triggers).
Checks: three dependent linears (y1 = lin(x), y2 = lin(y1), y3 = lin(y2)) chained == plain, bit for bit,
eagerly and in a CUDA-graph replay on fresh inputs. Timing: bench_linear's round-robin CUDA-graph replays over
input copies beyond L2, medians in us.
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
MODES = {  # name -> (quant launch_dependents, quant pdl_wait, GEMM pdl, GEMM launch_dependents)
    "plain": (False, False, False, False),
    "pair": (True, False, True, False),
    "chain": (True, True, True, True),
    "chain_q": (True, True, True, False),
}


def lin(x, wq, ws, mode):
    qd, qw, gp, gd = MODES[mode]
    xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0, launch_dependents=qd, pdl_wait=qw)
    return ptpc_gemm_small_m_launch(xq, xs, wq, ws, None, torch.bfloat16, pdl=gp, launch_dependents=gd)


ROWS = [(4096, 4096, 1), (4096, 4096, 16), (4096, 6144, 1), (4096, 6144, 16), (4096, 28672, 1),
        (4096, 28672, 16), (14336, 4096, 1), (14336, 4096, 16), (4096, 4096, 64)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="")
    a = p.parse_args()
    rows = [tuple(map(int, r.split(","))) for r in a.rows.split(";") if r] or ROWS
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv),
               check=[], rows=[])
    for N, M in [(4096, 1), (4096, 16), (4096, 7), (4096, 64)]:  # square weights: y feeds the next linear
        K = N
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        wq, ws = quantize_weight_per_channel(torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.03)

        def three(x, mode):
            y1 = lin(x, wq, ws, mode)
            y2 = lin(y1, wq, ws, mode)
            return y1, y2, lin(y2, wq, ws, mode)

        row = dict(K=K, N=N, M=M)
        for mode in ("pair", "chain", "chain_q"):
            try:
                ref = three(x, "plain")
                row[f"{mode}_eager_equal"] = all(torch.equal(r, o) for r, o in zip(ref, three(x, mode)))
                three(x, mode)
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    outs = three(x, mode)
                x.copy_(torch.randn_like(x))
                g.replay()
                torch.cuda.synchronize()
                ref = three(x, "plain")
                row[f"{mode}_graph_equal"] = all(torch.equal(r, o) for r, o in zip(ref, outs))
                row[f"{mode}_y3_absmax"] = float(outs[2].abs().max())
            except Exception as e:  # noqa: BLE001
                row[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(row, flush=True)
        res["check"].append(row)
    json.dump(res, open(a.out, "w"), indent=1)
    scratch = torch.randn(4096, device="cuda")
    for K, N, M in rows:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        xq, xs = per_token_quant_fp8_launch(x, FP8, 448.0)
        variants = {"bf16": (F.linear, (x, w))}
        for mode in ("pair", "chain", "chain_q"):
            variants[mode] = (lambda x, wq, ws, m=mode: lin(x, wq, ws, m), (x, wq, ws))
        for mode in ("pair", "chain"):
            variants[mode + "_sep"] = (lambda x, wq, ws, m=mode: (scratch.mul_(1.0), lin(x, wq, ws, m)), (x, wq, ws))
        variants["bf16_sep"] = (lambda x, w: (scratch.mul_(1.0), F.linear(x, w)), (x, w))
        variants["gemm_alone"] = (lambda xq, xs, wq, ws: ptpc_gemm_small_m_launch(xq, xs, wq, ws, None,
                                                                                  torch.bfloat16), (xq, xs, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()},
              {n: round(v, 3) for n, v in row["x_bf16"].items()}, flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
