"""Session 27: what the one-launch small-M linear's time at M = 1-16 depends on (diagnostic switch DIAG in
ptpc_linear_small_m_gluon.py, removed after): 1 = q by one multiply instead of the exact division, 2 = no scales
(the amax reads become dead code). Wrong answers by design; timing only.

    python benchmarks/experiments_s27/s27_one_launch_diag.py --out $OUT/one_launch_diag.json [--rounds 3]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import round_robin_us  # noqa: E402
from s27_block_n import pair  # noqa: E402

from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m_gluon as G  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), command=" ".join(sys.argv), rows=[])
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 4), (4096, 4096, 8), (4096, 4096, 16), (4096, 6144, 16)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        variants = {"bf16": (F.linear, (x, w)), "pair_pdl": (pair, (x, wq, ws))}
        for diag in (0, 1, 2):
            variants[f"one_diag{diag}"] = (
                lambda x, wq, ws, d=diag: G.ptpc_linear_small_m_gluon(x, wq, ws, None, 448.0, diag=d), (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        res["rows"].append(dict(K=K, N=N, M=M, us=us, samples_us=samples))
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()}, flush=True)


if __name__ == "__main__":
    main()
