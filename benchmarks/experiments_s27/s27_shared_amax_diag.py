"""Session 27 (second form: slots polled with volatile loads, no atomic in the exchange): where the shared-amax one launch's extra ~3 us goes (diagnostic switches in
ptpc_linear_small_m_gluon.EXPERIMENT, removed after): the cooperative launch attribute, the wait, the grid order
(the split-K programs of a tile adjacent or not), the second read of x.

    python benchmarks/experiments_s27/s27_shared_amax_diag.py --out $OUT/diag.json [--rounds 3]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import round_robin_us  # noqa: E402
from s27_shared_amax import one, pair  # noqa: E402

from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_linear_small_m_gluon as G  # noqa: E402

BASE = dict(wait=True, swap=False, reload=True, coop=True)
SWITCHES = {"share": {}, "nocoop": dict(coop=False), "swap": dict(swap=True), "swap_nocoop": dict(swap=True, coop=False),
            "noreload": dict(reload=False)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), command=" ".join(sys.argv), rows=[])
    for K, N, M in [(4096, 4096, 1), (4096, 4096, 4), (4096, 4096, 16), (4096, 6144, 4), (4096, 6144, 16)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_per_channel(w)
        variants = {"bf16": (F.linear, (x, w)), "pair_pdl": (pair, (x, wq, ws)),
                    "one": (lambda x, wq, ws: (G.EXPERIMENT.update(BASE), one(x, wq, ws))[1], (x, wq, ws))}
        for name, sw in SWITCHES.items():
            if name == "noreload" and M > 8:
                continue
            cfg = {**BASE, **sw}
            variants[name] = (lambda x, wq, ws, cfg=cfg: (G.EXPERIMENT.update(cfg), one(x, wq, ws, share=True))[1],
                              (x, wq, ws))
        samples, us = round_robin_us(variants, a.rounds)
        row = dict(K=K, N=N, M=M, us=us, samples_us=samples)
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(K, N, M, {n: round(v, 2) for n, v in us.items()}, flush=True)


if __name__ == "__main__":
    main()
