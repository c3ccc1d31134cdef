"""PTPC-FP8 linear vs bf16 F.linear on Llama-3-8B linear shapes (GPU only).

    python benchmarks/bench_linear.py --out results/bench_linear.json            # full, < 4 min on an H100
    python benchmarks/bench_linear.py --quick --out results/bench_linear.json    # subset, < 60 s

Columns (median times, CUDA-graph replay so Python dispatch does not swamp small M):
  bf16        F.linear(x_bf16, w_bf16)
  scaled_mm   torch._scaled_mm rowwise alone (x already quantized)
  triton_mm   our Triton GEMM alone (the small-M kernel for M <= 64, the tiled GEMM above)
  ptpc_linear torch.ops.rocm_attn.ptpc_linear, auto providers: quant + GEMM, bf16 in and out
  norm_mm     rms_norm_quant_fp8 (the fused norm + quant) then ptpc_scaled_mm: a compiled model's form
  *_fast      the same with fast accumulation (Config.fast_accum: no fp32 promotion of the fp8 tensor
              cores' partial sums; torchao rowwise's default). The JSON row also has the relative
              error of each GEMM, precise and fast, against an fp32 product of the same fp8 operands,
              on these inputs and on all-positive ones (the worst case for a truncating accumulator).
  quant       per_token_quant_fp8 alone, as GB/s and % of a measured device-to-device copy: of the
              256 MiB copy's bandwidth (--> "% copy") and of a copy that moves the quant's own bytes
              (read + write, rotated like the rest: "% same-size copy"; small transfers never reach
              the large copy's bandwidth, launch and ramp-up included)
Every variant (bf16 and ours alike) is timed rotating over copies of its inputs (weight and
activations) that together exceed ROTATE_BYTES (> 2x the H100's 50 MB L2): one CUDA graph runs
the op once per copy, and the time is divided by the number of copies. Each shape times its
variants round-robin, --rounds times (default 3), and keeps each variant's median, so slow drift
of the GPU's clocks falls on all of them alike. Timing one buffer over
and over measured the L2, not HBM (bf16 K = N = 4096, M = 16 ran at 3.7 TB/s).
Ratios are bf16 time / our time (> 1: faster than bf16). Writes JSON (--out) and prints a
markdown table. benchmarks/tune_linear.py times the candidate kernels one by one and prints
the tables (CUDA_AUTO_TABLE, the small-M TUNED configs, the quant block per K) to paste in.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

LLAMA_KN = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
MS = [1, 16, 128, 1024, 4096, 8192]
QUICK_KN = [(4096, 4096), (14336, 4096)]
QUICK_MS = [1, 16, 1024, 4096]
ROTATE_BYTES = 128 * 2**20  # each variant's input copies together: > 2x the H100's 50 MB L2
MAX_COPIES = 64  # inputs of a few KB (quant at M = 1) would need thousands: launch-bound anyway


def bench(fn) -> float:
    """Median ms of one call, replayed from a CUDA graph (warm-up and autotuning first)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))


def input_copies(tensors) -> list[tuple]:
    """Enough copies of the tensors that they do not fit in L2 together (the first is them)."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    n = max(1, min(MAX_COPIES, -(-ROTATE_BYTES // max(size, 1))))
    return [tuple(tensors)] + [tuple(t.clone() for t in tensors) for _ in range(n - 1)]


def round_robin(variants: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """variants: name -> (fn, input tensors). Times each `rounds` times, round-robin, each call rotating over
    copies of its inputs beyond L2 (input_copies): ms per call of every round, and each variant's copy count.
    Round-robin because a variant timed once, after the others, drifts with the GPU's thermal state (up to
    ~10% on the long kernels, Session 11); callers keep the median."""
    rotated = {name: (fn, input_copies(tensors)) for name, (fn, tensors) in variants.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, sets) in rotated.items():
            samples[name].append(bench(lambda fn=fn, sets=sets: [fn(*s) for s in sets]) / len(sets))
    return samples, {name: len(sets) for name, (_, sets) in rotated.items()}


def round_robin_us(variants: dict, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """round_robin in microseconds: (each variant's samples, their medians). The experiment scripts' timing."""
    samples = {name: [t * 1000 for t in ms] for name, ms in round_robin(variants, rounds)[0].items()}
    return samples, {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth_gbs() -> float:
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6  # read + write


def run_shape(K, N, M, copy_gbs, rounds: int = 3):
    from rocm_attn.kernels import use_kernels
    from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel

    import rocm_attn  # noqa: F401  (registers the ops)

    ops = torch.ops.rocm_attn
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    norm_w = torch.rand(K, device="cuda", dtype=torch.bfloat16) + 0.5
    wq, w_scale = quantize_weight_per_channel(w)
    xq, x_scale = ops.per_token_quant_fp8(x)
    wq_t, w_scale_t = wq.t(), w_scale.t()
    quant_bytes = M * K * (2 + 1) + 4 * M  # bf16 in, fp8 out, fp32 scale
    copy_src = torch.empty(max(quant_bytes // 2, 1), dtype=torch.uint8, device="cuda")  # read + write

    def scaled_mm(xq, x_scale, wq_t, w_scale_t, fast=False):
        return torch._scaled_mm(xq, wq_t, scale_a=x_scale, scale_b=w_scale_t, out_dtype=torch.bfloat16,
                                use_fast_accum=fast)

    def triton_mm(xq, x_scale, wq, w_scale, fast=False):
        with use_kernels("triton"):
            return ops.ptpc_scaled_mm(xq, x_scale, wq, w_scale, fast_accum=fast)

    def norm_mm(x, norm_w, wq, w_scale, fast=False):
        q, s = ops.rms_norm_quant_fp8(x, norm_w, 1e-5)
        return ops.ptpc_scaled_mm(q, s, wq, w_scale, fast_accum=fast)

    def fast(fn):
        return lambda *a: fn(*a, fast=True)

    variants = {
        "bf16": (F.linear, (x, w)),
        "scaled_mm": (scaled_mm, (xq, x_scale, wq_t, w_scale_t)),
        "scaled_mm_fast": (fast(scaled_mm), (xq, x_scale, wq_t, w_scale_t)),
        "triton_mm": (triton_mm, (xq, x_scale, wq, w_scale)),
        "triton_mm_fast": (fast(triton_mm), (xq, x_scale, wq, w_scale)),
        "ptpc_linear": (ops.ptpc_linear, (x, wq, w_scale)),
        "ptpc_linear_fast": (lambda *a: ops.ptpc_linear(*a, fast_accum=True), (x, wq, w_scale)),
        "norm_mm": (norm_mm, (x, norm_w, wq, w_scale)),
        "norm_mm_fast": (fast(norm_mm), (x, norm_w, wq, w_scale)),
        "quant": (ops.per_token_quant_fp8, (x,)),
        "copy_same_bytes": (lambda s, d: d.copy_(s), (copy_src, torch.empty_like(copy_src))),
    }
    samples, copies = round_robin(variants, rounds)
    timings = {name: (statistics.median(v), copies[name]) for name, v in samples.items()}
    errors = accumulation_errors(x, w, scaled_mm, triton_mm)
    t = {k: ms for k, (ms, _) in timings.items()}
    flop = 2.0 * M * N * K
    gemms = {k: v for k, v in t.items() if k not in ("quant", "copy_same_bytes")}
    row = {"K": K, "N": N, "M": M, "ms": t,
           "tflops": {k: flop / v / 1e9 for k, v in gemms.items()},
           "vs_bf16": {k: t["bf16"] / v for k, v in gemms.items() if k != "bf16"},
           "quant_gbs": quant_bytes / t["quant"] / 1e6,
           "quant_pct_copy": 100.0 * quant_bytes / t["quant"] / 1e6 / copy_gbs,
           "quant_pct_same_size_copy": 100.0 * t["copy_same_bytes"] / t["quant"],
           "weight_read_gbs_ptpc": N * K / t["ptpc_linear"] / 1e6,
           "input_copies": {k: n for k, (_, n) in timings.items()}, "rel_err": errors,
           "samples_ms": samples}
    return row


def accumulation_errors(x, w, scaled_mm, triton_mm) -> dict:
    """Relative error (Frobenius) of each GEMM, precise and fast accumulation, against the fp32
    product of the same fp8 operands (so the quantization error itself is not counted), on the
    bench's inputs ("randn") and on all-positive ones ("positive": every product has the same sign,
    the worst case for an accumulator that truncates)."""
    from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel

    ops = torch.ops.rocm_attn
    out = {}
    for name, (xa, wa) in {"randn": (x, w), "positive": (x.abs(), w.abs())}.items():
        xq, xs = ops.per_token_quant_fp8(xa)
        wq, ws = quantize_weight_per_channel(wa)
        ref = (xq.float() @ wq.float().t()) * xs * ws.t()
        for mm_name, fn, args in (("scaled_mm", scaled_mm, (xq, xs, wq.t(), ws.t())),
                                  ("triton_mm", triton_mm, (xq, xs, wq, ws))):
            for mode in ("precise", "fast"):
                got = fn(*args, fast=mode == "fast").float()
                out[f"{mm_name}_{mode}_{name}"] = float((got - ref).norm() / ref.norm())
    return out


def markdown(rows, copy_gbs, device):
    lines = [f"device: {device}; d2d copy {copy_gbs:.0f} GB/s; times in us (median, CUDA graph); "
             "x = bf16 time / ours",
             f"every variant rotates over copies of its weight and activations (>= {ROTATE_BYTES >> 20} MiB "
             "per variant, one CUDA graph over all copies, time / copies): HBM, not L2", "",
             "| K | N | M | bf16 | scaled_mm | triton_mm | ptpc_linear | norm_mm | ptpc_linear x | norm_mm x "
             "| scaled_mm x | triton_mm x | fast: scaled_mm x | triton_mm x | ptpc_linear x | norm_mm x "
             "| quant GB/s (% copy, % same-size copy) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        us = {k: v * 1e3 for k, v in r["ms"].items()}
        x = r["vs_bf16"]
        lines.append(
            f"| {r['K']} | {r['N']} | {r['M']} | {us['bf16']:.1f} | {us['scaled_mm']:.1f} "
            f"| {us['triton_mm']:.1f} | {us['ptpc_linear']:.1f} | {us['norm_mm']:.1f} "
            f"| {x['ptpc_linear']:.2f} | {x['norm_mm']:.2f} | {x['scaled_mm']:.2f} | {x['triton_mm']:.2f} "
            f"| {x['scaled_mm_fast']:.2f} | {x['triton_mm_fast']:.2f} | {x['ptpc_linear_fast']:.2f} "
            f"| {x['norm_mm_fast']:.2f} "
            f"| {r['quant_gbs']:.0f} ({r['quant_pct_copy']:.0f}%, {r['quant_pct_same_size_copy']:.0f}%) |")
    lines += ["", "relative error vs the fp32 product of the same fp8 operands (precise / fast accumulation):", "",
              "| K | N | M | scaled_mm randn | triton_mm randn | scaled_mm positive | triton_mm positive |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["rel_err"]
        cells = [f"{e[f'{mm}_precise_{inp}']:.1e} / {e[f'{mm}_fast_{inp}']:.1e}"
                 for inp in ("randn", "positive") for mm in ("scaled_mm", "triton_mm")]
        lines.append(f"| {r['K']} | {r['N']} | {r['M']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_linear.json", help="JSON results path")
    ap.add_argument("--quick", action="store_true", help="a subset that runs in < 60 s")
    ap.add_argument("--ms", type=str, default=None, help="comma-separated M values (override)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved timing rounds per shape (median; default 3, --quick 1)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_linear needs a CUDA/ROCm GPU")
    kns = QUICK_KN if args.quick else LLAMA_KN
    ms = [int(m) for m in args.ms.split(",")] if args.ms else (QUICK_MS if args.quick else MS)
    rounds = 1 if args.quick and args.rounds == 3 else max(1, args.rounds)
    torch.manual_seed(0)
    start = time.time()
    copy_gbs = copy_bandwidth_gbs()
    rows = []
    for K, N in kns:
        for M in ms:
            rows.append(run_shape(K, N, M, copy_gbs, rounds))
            r = rows[-1]
            print(f"K={K} N={N} M={M}: ptpc_linear {r['vs_bf16']['ptpc_linear']:.2f}x bf16 "
                  f"({r['ms']['ptpc_linear'] * 1e3:.1f} us); norm_mm {r['vs_bf16']['norm_mm']:.2f}x, "
                  f"fast {r['vs_bf16']['norm_mm_fast']:.2f}x", flush=True)
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(0)
    table = markdown(rows, copy_gbs, device)
    print(table)
    result = {"device": device, "torch": torch.__version__, "copy_gbs": copy_gbs, "rows": rows,
              "method": f"weights and activations rotated over copies >= {ROTATE_BYTES >> 20} MiB "
                        f"per variant; median of {rounds} interleaved rounds",
              "seconds": time.time() - start,
              "command": "python benchmarks/bench_linear.py" + (" --quick" if args.quick else "")}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
