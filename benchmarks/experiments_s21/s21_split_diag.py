"""Session 21: where the Gluon GEMM's time goes at M = 128 (why splitting K does not pay).

    python benchmarks/experiments_s21/s21_split_diag.py --out $OUT/split_diag.json

Times (rotated copies, CUDA-graph replays, us) the Gluon GEMM at M = 128, N = 4096 over K, unsplit, split
with the split epilogue forced at split_k = 1 (its fixed cost), and split 2 / 4; and each kernel's own GPU
time from the profiler (no launch gaps).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_linear import bench, input_copies  # noqa: E402

import rocm_attn  # noqa: E402,F401
from rocm_attn.kernels.triton_kernels import launch_cache  # noqa: E402
from rocm_attn.kernels.triton_kernels import ptpc_gemm_gluon as gg  # noqa: E402
from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import _counters  # noqa: E402
from rocm_attn.testing import fp8_gemm_operands  # noqa: E402


def forced(xq, xs, wq, ws, split_k, force_split, halves=1, stages=6):
    """_launch_checked_inputs with the split epilogue forced on (even at split_k = 1)."""
    M, K = xq.shape
    N = wq.shape[0]
    out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    tiles = launch_cache.cdiv(M, gg.BLOCK_M) * launch_cache.cdiv(N, gg.HALF_N * halves)
    split = force_split or split_k > 1
    counters = _counters(xq.device, 2 * tiles) if split else ws
    partials = torch.empty((split_k, M, N), dtype=torch.float32, device="cuda") if split else out
    a = gg.TensorDescriptor.from_tensor(xq, [64, 128], gg._smem_layout(64, 128, "float8e4nv"))
    b = gg.TensorDescriptor.from_tensor(wq, [128, 128], gg._smem_layout(128, 128, "float8e4nv"))
    c = gg.TensorDescriptor.from_tensor(out, [64, 128], gg._smem_layout(64, 128, "bfloat16"))
    grid = (min(tiles * split_k, 132),)
    args = (a, b, c, xs, ws, ws, M, N, K, split_k, partials, counters, out)
    gg.launch_cache.launch(gg._COMPILED, gg._ptpc_gemm_gluon_kernel, grid, args,
                           dict(HALVES=halves, STAGES=stages, GROUP_M=16, HAS_BIAS=False,
                                CONSUMER_REGS=gg.CONSUMER_REGS, C_BUFS=1, SPLIT=split),
                           num_warps=4, maxnreg=168)
    return out


def gpu_us(fn, reps=20):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type.name == "CUDA" and "gemm" in e.name]
    return sum(e.device_time for e in ev) / max(len(ev), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for N, K in [(4096, 512), (4096, 1024), (4096, 2048), (4096, 4096), (4096, 8192), (4096, 16384)]:
        M = 128
        xq, xs, wq, ws = fp8_gemm_operands(M, N, K)
        row = dict(M=M, N=N, K=K)
        for name, split_k, force in [("s1", 1, False), ("s1_split_epilogue", 1, True), ("s2", 2, False),
                                     ("s4", 4, False)]:
            fn = lambda *t, split_k=split_k, force=force: forced(*t, split_k, force)  # noqa: E731
            sets = input_copies((xq, xs, wq, ws))
            row[name] = bench(lambda: [fn(*s) for s in sets]) * 1000 / len(sets)
            try:
                row[name + "_kernel"] = gpu_us(lambda: fn(*sets[-1]))
            except Exception as e:  # noqa: BLE001 - the profiler's API moves between versions
                row[name + "_kernel"] = repr(e)[:80]
        rows.append(row)
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
