"""Session 22: per_token_quant_fp8 on long rows (K = 14336, the two-pass kernel) with L2 cache hints.

    python benchmarks/experiments_s22/s22_quant_long_rows.py --out $OUT/quant_long_rows.json [--ms 1,16,1024]

The production kernel reads each row twice (amax, then quantize), the second read meant to hit L2. Variants:
that kernel's two-pass path launched directly with and without its L2 eviction hints (the first read kept in
L2 (evict_last), the second read and the fp8 store streamed (evict_first)), over BLOCK_K and num_warps, against
the production launcher (its own rule) and a copy moving the same bytes; outputs compared bit for bit with
the production launcher's first.
CUDA-graph replays over input copies beyond L2 (bench_linear's helpers), round-robin rounds, medians.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import round_robin_us  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels.per_token_quant import inv_fp8_max, scale_floor  # noqa: E402
from rocm_attn.kernels.triton_kernels.per_token_quant import _per_token_quant_fp8_kernel  # noqa: E402


def variant(block, warps, hints):
    def run(x):
        M, K = x.shape
        xq = torch.empty((M, K), dtype=torch.float8_e4m3fn, device=x.device)
        scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
        # the kept kernel's two-pass path, its hints and warps set here rather than by the M rule
        _per_token_quant_fp8_kernel[(M,)](x, xq, scale, K, x.stride(0), FP8_MAX=448.0,
                                          INV_FP8_MAX=inv_fp8_max(448.0), SCALE_FLOOR=scale_floor(448.0),
                                          BLOCK_K=block, SINGLE_BLOCK=False, L2_HINTS=hints, num_warps=warps)
        return xq, scale
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ms", default="1024,4096,8192", help="the row counts (comma-separated)")
    a = p.parse_args()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=" ".join(sys.argv), rows=[])
    variants = {f"b{b}_w{w}_{'hints' if h else 'plain'}": variant(b, w, h)
                for b in (2048, 4096) for w in (8, 16) for h in (False, True)}
    for M in map(int, a.ms.split(",")):
        K = 14336
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        ref_q, ref_s = torch.ops.rocm_attn.per_token_quant_fp8(x)
        same = {}
        for name, fn in variants.items():
            q, s = fn(x)
            same[name] = bool(torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s))
        copy_src = torch.empty(M * K * 3 // 2, dtype=torch.uint8, device="cuda")
        timed = {"production": (torch.ops.rocm_attn.per_token_quant_fp8, (x,)),
                 "copy_same_bytes": (lambda s, d: d.copy_(s), (copy_src, torch.empty_like(copy_src)))}
        timed.update({n: (fn, (x,)) for n, fn in variants.items()})
        samples, us = round_robin_us(timed, a.rounds)
        row = dict(M=M, K=K, us=us, bit_equal=same, samples_us=samples)
        res["rows"].append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        print(M, K, {n: round(v, 1) for n, v in sorted(us.items(), key=lambda kv: kv[1])}, "all equal:",
              all(same.values()), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
