"""Session 27: torch.ops.rocm_attn.ptpc_linear (auto) at decode sizes of small models' shapes, on the final code
(the one launch at M <= 8 for K <= 2048, split 4 at K = 2048), against the same op with the one launch turned off
(ROCM_ATTN_GLUON_SMALL_M=0: the PDL pair) and bf16 F.linear. Shapes: K = 512; Qwen3-0.6B-like K = 1024 (N = 1024,
3072); Llama-3.2-1B-like K = 2048 (N = 2048, 8192); K = N = 4096 (unchanged rule).

    python benchmarks/experiments_s27/s27_small_k_op.py --out $OUT/small_k_op.json [--rounds 5]

Timing: bench_linear's round robin (CUDA-graph replays over input copies beyond L2), medians in us. Each row also
checks the op's output against the torch reference.
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
from rocm_attn.kernels.ptpc_linear import _one_launch_takes, ptpc_linear_torch  # noqa: E402
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402

SHAPES = [(512, 2048), (1024, 1024), (1024, 3072), (2048, 2048), (2048, 8192), (4096, 4096)]


def op(x, wq, ws):
    return torch.ops.rocm_attn.ptpc_linear(x, wq, ws)


def op_pair(x, wq, ws):
    os.environ["ROCM_ATTN_GLUON_SMALL_M"] = "0"
    try:
        return torch.ops.rocm_attn.ptpc_linear(x, wq, ws)
    finally:
        del os.environ["ROCM_ATTN_GLUON_SMALL_M"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv), rows=[])
    for K, N in SHAPES:
        for M in (1, 4, 8, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
            wq, ws = quantize_weight_per_channel(w)
            ref = ptpc_linear_torch(x, wq, ws)
            err = ((op(x, wq, ws).float() - ref.float()).norm() / ref.float().norm()).item()
            variants = {"bf16": (F.linear, (x, w)), "op": (op, (x, wq, ws)), "op_pair": (op_pair, (x, wq, ws))}
            samples, us = round_robin_us(variants, a.rounds)
            takes = _one_launch_takes(x, wq, x.dtype, False)
            row = dict(K=K, N=N, M=M, one_launch=takes, rel_vs_torch=err, us=us,
                       samples_us=samples, x_bf16={n: us["bf16"] / us[n] for n in us})
            res["rows"].append(row)
            json.dump(res, open(a.out, "w"), indent=1)
            print(K, N, M, row["one_launch"], {n: round(v, 2) for n, v in us.items()},
                  {n: round(v, 3) for n, v in row["x_bf16"].items()}, f"rel {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
