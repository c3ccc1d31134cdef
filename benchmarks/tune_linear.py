"""Tune the PTPC-FP8 linear kernels on this GPU; prints the tables to paste into the source.

    python benchmarks/tune_linear.py --out results/tune_linear.json        # < 3 min on an H100
    python benchmarks/tune_linear.py --kn 4096x4096 --ms 1,16 --out t.json  # a subset

For the Llama-3-8B linear shapes (K, N) and M in {1, 16, 64, 128, 1024, 4096} it times
(CUDA-graph replay, median) every candidate:
  - small M (<= 64): each small-M kernel config (incl. split-K) on pre-quantized x
    (ptpc_scaled_mm) vs torch._scaled_mm, and ptpc_linear's two launches (quant kernel + that
    config); the config with the best two-launch time goes into TUNED;
  - larger M: each tiled Triton GEMM config vs torch._scaled_mm;
  - per_token_quant_fp8: single-block and looped variants (block, warps), as % of copy.
Every candidate (bf16 F.linear included) is timed rotating over copies of its inputs (weight
and activations) that together exceed ROTATE_BYTES (> 2x the H100's 50 MB L2): one CUDA graph
runs it once per copy, the time is divided by the copies (one buffer timed over and over sat
in L2: bf16 K = N = 4096, M = 16 ran at 3.7 TB/s).
Every candidate's output is first checked against an fp64 reference (rel_err < 2e-2; the
quant variants must match the torch reference bit for bit); a failing one is marked WRONG
and never wins. It then prints, in the source's own syntax:
  CUDA_AUTO_TABLE   -> kernels/ptpc_scaled_mm.py
  TUNED             -> kernels/triton_kernels/ptpc_gemm_small_m.py
  the best quant (block, warps) per K -> kernels/triton_kernels/per_token_quant.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

LLAMA_KN = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
MS = [1, 16, 64, 128, 1024, 4096]
SMALL_M_MAX = 64
REL_TOL = 2e-2
WRONG = float("inf")
ROTATE_BYTES = 128 * 2**20  # each candidate's input copies together: > 2x the H100's 50 MB L2
MAX_COPIES = 64  # inputs of a few KB would need thousands of copies (launch-bound anyway)


def input_copies(tensors) -> list[tuple]:
    """Enough copies of the tensors that they do not fit in L2 together (the first is them)."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    n = max(1, min(MAX_COPIES, -(-ROTATE_BYTES // max(size, 1))))
    return [tuple(tensors)] + [tuple(t.clone() for t in tensors) for _ in range(n - 1)]


def bench_us(fn, sets) -> float:
    """Median us of one fn(*inputs) call: each replay of one CUDA graph runs fn once on every
    input set of `sets` (input_copies), so no call finds its inputs in L2."""
    import triton.testing

    def run_all():
        return [fn(*inputs) for inputs in sets]

    run_all()
    torch.cuda.synchronize()
    return 1e3 * float(triton.testing.do_bench_cudagraph(run_all, rep=10, return_mode="median")) / len(sets)


def rel_err(out, ref) -> float:
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def copy_gbs() -> float:
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench_us(lambda: dst.copy_(src), [()]) / 1e3  # 256 MiB: no L2 reuse


def timed(name, fn, sets, ref, log) -> float:
    """Check fn(*sets[0]) against ref, then time it over the sets; WRONG (inf) if it is off or fails."""
    try:
        out = fn(*sets[0])
        torch.cuda.synchronize()
        err = rel_err(out, ref)
        if not err < REL_TOL:
            log[name] = {"us": None, "rel_err": err, "status": "WRONG"}
            print(f"    {name}: WRONG (rel_err {err:.3g})")
            return WRONG
        us = bench_us(fn, sets)
    except Exception as exc:  # a config that does not compile / fit: skip it
        log[name] = {"us": None, "status": f"failed: {type(exc).__name__}: {str(exc)[:120]}"}
        print(f"    {name}: failed ({type(exc).__name__})")
        return WRONG
    log[name] = {"us": us, "rel_err": err, "status": "ok"}
    return us


def small_m_name(cfg) -> str:
    return f"n{cfg['BLOCK_N']}_k{cfg['BLOCK_K']}_s{cfg['SPLIT_K']}_w{cfg['num_warps']}_st{cfg['num_stages']}"


def tiled_name(cfg) -> str:
    return f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']}_w{cfg['num_warps']}_st{cfg['num_stages']}"


def config_dict(c) -> dict:
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def small_m_candidates():
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import CONFIGS

    extra = [  # beyond the autotune list: longer K blocks, deeper pipelines
        {"BLOCK_N": 16, "BLOCK_K": 1024, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2},
        {"BLOCK_N": 16, "BLOCK_K": 512, "SPLIT_K": 4, "num_warps": 4, "num_stages": 4},
        {"BLOCK_N": 32, "BLOCK_K": 512, "SPLIT_K": 4, "num_warps": 4, "num_stages": 3},
        {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 8, "num_warps": 4, "num_stages": 4},
        {"BLOCK_N": 32, "BLOCK_K": 1024, "SPLIT_K": 2, "num_warps": 8, "num_stages": 2},
    ]
    return [config_dict(c) for c in CONFIGS] + extra


def tune_shape(K, N, M, results, quant_cfg):
    from rocm_attn.kernels import fp8_max, use_kernels
    from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel
    from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch
    from rocm_attn.kernels.triton_kernels.ptpc_gemm import CONFIGS as TILED
    from rocm_attn.kernels.triton_kernels.ptpc_gemm import ptpc_gemm_launch
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch

    import rocm_attn  # noqa: F401  (registers the ops)

    ops = torch.ops.rocm_attn
    gen = torch.Generator(device="cuda").manual_seed(K * 7 + N * 3 + M)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    wq, ws = quantize_weight_per_channel(w)
    with use_kernels("torch"):
        xq, xs = ops.per_token_quant_fp8(x)
    ref = (xq.double() @ wq.double().t()) * xs.double() * ws.double().t()
    fmax = fp8_max()
    log: dict = {}
    # every candidate rotates over copies of its own inputs (see the docstring)
    bf16_sets, fp8_sets = input_copies((x, w)), input_copies((xq, xs, wq, ws))
    x_sets, linear_sets = input_copies((x,)), input_copies((x, wq, ws))

    def scaled_mm(xq, xs, wq, ws):
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)

    def quant(x):
        return per_token_quant_fp8_launch(x, wq.dtype, fmax, *quant_cfg.get(K, (None, None)))

    t_bf16 = bench_us(torch.nn.functional.linear, bf16_sets)
    t_torch = timed("torch._scaled_mm", scaled_mm, fp8_sets, ref, log)
    t_quant = bench_us(quant, x_sets)
    row = {"K": K, "N": N, "M": M, "bf16_us": t_bf16, "quant_us": t_quant, "candidates": log,
           "input_copies": {"bf16": len(bf16_sets), "fp8_gemm": len(fp8_sets), "quant": len(x_sets),
                            "ptpc_linear": len(linear_sets)}}
    if M <= SMALL_M_MAX:
        # each config alone (x pre-quantized) and after the quant kernel, as ptpc_linear runs it; the config
        # with the best pair time wins (that is what a model runs)
        best_mm, best_pair = (WRONG, None, None), (WRONG, None, None)
        for cfg in small_m_candidates():
            name = small_m_name(cfg)
            t = timed(f"small_m {name}", lambda xq, xs, wq, ws, cfg=cfg: ptpc_gemm_small_m_launch(
                xq, xs, wq, ws, None, torch.bfloat16, config=cfg), fp8_sets, ref, log)
            best_mm = min(best_mm, (t, name, cfg), key=lambda p: p[0])

            def two(x, wq, ws, cfg=cfg):
                q, s = quant(x)
                return ptpc_gemm_small_m_launch(q, s, wq, ws, None, torch.bfloat16, config=cfg)

            t2 = timed(f"quant + small_m {name}", two, linear_sets, ref, log) if t < WRONG else WRONG
            best_pair = min(best_pair, (t2, name, cfg), key=lambda p: p[0])
        row.update(triton_mm_us=best_mm[0], triton_mm_alone_config=best_mm[2], triton_mm_config=best_pair[2],
                   two_launch_us=best_pair[0])
    else:
        best = (WRONG, None, None)
        for c in TILED:
            cfg = config_dict(c)
            t = timed(f"tiled {tiled_name(cfg)}", lambda xq, xs, wq, ws, cfg=cfg: ptpc_gemm_launch(
                xq, xs, wq, ws, None, torch.bfloat16, config=cfg), fp8_sets, ref, log)
            best = min(best, (t, tiled_name(cfg), cfg), key=lambda p: p[0])
        row.update(triton_mm_us=best[0], triton_mm_config=best[2])
    row["torch_mm_us"] = t_torch
    row["mm_winner"] = "triton" if row["triton_mm_us"] < t_torch else "torch"
    results.append(row)
    best_linear = min(row.get("two_launch_us", WRONG),
                      t_quant + min(t_torch, row["triton_mm_us"]))
    print(f"K={K} N={N} M={M}: bf16 {t_bf16:.1f} us | torch._scaled_mm {t_torch:.1f} "
          f"| triton {row['triton_mm_us']:.1f}"
          + (f" | two-launch {row['two_launch_us']:.1f}"
             if M <= SMALL_M_MAX else "")
          + f" | winners: {row['mm_winner']}, {row['triton_mm_config']}"
          + f" | quant {t_quant:.1f} | best ptpc_linear ~{t_bf16 / best_linear:.2f}x bf16", flush=True)
    del ref, bf16_sets, fp8_sets, x_sets, linear_sets
    torch.cuda.empty_cache()


def tune_quant(ks, ms, gbs, out):
    """Per K: the fastest (block_k, num_warps) of per_token_quant_fp8 that is bit-exact."""
    from rocm_attn.kernels import fp8_dtype, fp8_max, use_kernels
    from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch

    best = {}
    for K in ks:
        variants = [(None, None)] + [(b, w) for b in (2048, 4096, 8192, 16384) for w in (4, 8, 16)]
        totals = {}
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            with use_kernels("torch"):
                q_ref, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
            x_sets = input_copies((x,))
            for b, w in variants:
                key = f"block{b}_w{w}" if b else "default"
                def run(x, b=b, w=w):
                    return per_token_quant_fp8_launch(x, fp8_dtype(), fp8_max(), b, w)

                try:
                    q, s = run(x)
                    exact = torch.equal(s, s_ref) and torch.equal(q.view(torch.uint8),
                                                                  q_ref.view(torch.uint8))
                    us = bench_us(run, x_sets) if exact else WRONG
                except Exception:
                    us = WRONG
                pct = 100.0 * (M * K * 3 + 4 * M) / us / 1e3 / gbs if us < WRONG else 0.0  # read + write
                out.append({"K": K, "M": M, "variant": key, "us": us if us < WRONG else None,
                            "pct_copy": pct})
                totals[(b, w)] = totals.get((b, w), 0.0) + us
        (b, w), _ = min(totals.items(), key=lambda kv: kv[1])
        best[K] = (b, w)
        rows = [r for r in out if r["K"] == K]
        pick = [r for r in rows if r["variant"] == (f"block{b}_w{w}" if b else "default")]
        print(f"quant K={K}: best {'default' if b is None else f'block_k={b}, num_warps={w}'}: "
              + ", ".join(f"M={r['M']} {r['us']:.1f} us ({r['pct_copy']:.0f}% copy)" for r in pick),
              flush=True)
    return best


def auto_table(results):
    """CUDA_AUTO_TABLE rows per (N, K): the faster GEMM provider per measured M, merged."""
    table = {}
    for K, N in sorted({(r["K"], r["N"]) for r in results}):
        rows = sorted((r for r in results if (r["K"], r["N"]) == (K, N)), key=lambda r: r["M"])
        merged = []
        for i, r in enumerate(rows):
            bound = None if i == len(rows) - 1 else r["M"]
            if merged and merged[-1][1] == r["mm_winner"]:
                merged[-1] = (bound, r["mm_winner"])
            else:
                merged.append((bound, r["mm_winner"]))
        table[(N, K)] = merged
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tune_linear.json", help="JSON results path")
    ap.add_argument("--kn", default=None, help="comma-separated KxN shapes, e.g. 4096x4096,14336x4096")
    ap.add_argument("--ms", default=None, help="comma-separated M values")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_linear needs a CUDA GPU")
    kns = [tuple(int(v) for v in s.split("x")) for s in args.kn.split(",")] if args.kn else LLAMA_KN
    ms = [int(m) for m in args.ms.split(",")] if args.ms else MS
    start = time.time()
    torch.manual_seed(0)
    print(f"every candidate (bf16 included) rotates over copies of its weight and activations "
          f"(>= {ROTATE_BYTES >> 20} MiB per candidate, one CUDA graph over all copies, time / copies)",
          flush=True)
    gbs = copy_gbs()
    quant_rows: list = []
    quant_ms = [m for m in ms if m >= 1024] or [max(ms)]
    quant_best = tune_quant(sorted({K for K, _ in kns}), quant_ms, gbs, quant_rows)
    quant_cfg = {K: bw for K, bw in quant_best.items() if bw != (None, None)}
    results: list = []
    for K, N in kns:
        for M in ms:
            tune_shape(K, N, M, results, quant_cfg)

    print("\n# kernels/ptpc_scaled_mm.py")
    print("CUDA_AUTO_TABLE: dict[tuple[int, int] | None, list[tuple[int | None, str]]] = {")
    print("    None: DEFAULT_AUTO_ROWS,")
    for (N, K), rows in auto_table(results).items():
        print(f"    ({N}, {K}): {rows!r},")
    print("}")
    print("\n# kernels/triton_kernels/ptpc_gemm_small_m.py")
    print("TUNED: dict[tuple[int, int, int], dict] = {")
    for r in results:
        if r["M"] <= SMALL_M_MAX and r["triton_mm_config"] is not None:
            bucket = 1 << max(r["M"] - 1, 0).bit_length()
            print(f"    ({bucket}, {r['N']}, {r['K']}): {r['triton_mm_config']!r},")
    print("}")
    print("\n# kernels/triton_kernels/per_token_quant.py: best (block_k, num_warps) per K "
          "(None = the current default)")
    for K, (b, w) in quant_best.items():
        print(f"#   K={K}: block_k={b}, num_warps={w}")
    print(f"\ncopy {gbs:.0f} GB/s; {time.time() - start:.0f} s")
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "copy_gbs": gbs,
           "rows": results, "quant": quant_rows,
           "auto_table": {f"{N}x{K}": rows for (N, K), rows in auto_table(results).items()},
           "method": f"weights and activations rotated over copies >= {ROTATE_BYTES >> 20} MiB "
                     "per candidate",
           "seconds": time.time() - start,
           "command": "python benchmarks/tune_linear.py" + (f" --kn {args.kn}" if args.kn else "")
           + (f" --ms {args.ms}" if args.ms else "")}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=lambda v: None if v == WRONG else str(v))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
