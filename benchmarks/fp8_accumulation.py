"""How the fp32 promotion of sm_90 FP8 partial sums is written in Triton, and what it costs (GPU only).

    python benchmarks/fp8_accumulation.py --out results/fp8_accumulation.json      # ~90 s on an H100

An fp8 wgmma adds into its accumulator with ~14 mantissa bits; "precise" GEMMs add the tensor cores'
partial sum into an fp32 accumulator every few K elements (cuBLAS / CUTLASS / DeepSeek-V3: every 128).
Our tiled GEMM (kernels/triton_kernels/ptpc_gemm.py) does it with tl.dot(max_num_imprecise_acc=128).
This script asks whether another way of writing the promotion in Triton is faster, one GEMM kernel
with a constexpr MODE:
  prec128   tl.dot(..., max_num_imprecise_acc=128)         the library's default
  fast      tl.dot with no promotion (Triton's sm_90 default; Config.fast_accum)
  prec256   BLOCK_K = 256, max_num_imprecise_acc = 256     promotion half as often
  manual1   part = tl.dot(x, w) fresh per K block; acc += part   (promotion every BLOCK_K, by hand)
  pingpong  two K blocks per iteration; the add of one block's partial is issued after the next
            block's dot, so the tensor cores can run while the other partial is added
  group2    two K blocks chained on one partial, then acc += part (promotion every 2 x BLOCK_K)
(a 4-block group runs out of shared memory on every tile: the pipeliner stages all four loads.)
Accuracy: relative error against the fp64 product of the same fp8 operands (quantization error
excluded), M = N = 1024, on randn inputs and on all-positive ones (every product the same sign: the
worst case for a truncating accumulator). Speed: each mode's best of a short tile list (triton's
do_bench, L2 flushed), with bf16 F.linear and torch._scaled_mm (cuBLASLt, precise and fast) timed in
the same run, on Llama-3-8B shapes. Writes JSON and prints a markdown table.
"""
import argparse
import json
from functools import partial

import torch
import triton
import triton.language as tl
from rocm_attn.kernels.triton_kernels.ptpc_gemm import grouped_tile, store_scaled_tile
from triton.testing import do_bench


@triton.jit
def gemm(x_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
         MODE: tl.constexpr, G: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # the library GEMM's tile order, pointers and epilogue; only the K loop differs per MODE
    offs_m, offs_n, _, x_ptrs, w_ptrs = grouped_tile(x_ptr, w_ptr, M, N, stride_xm, stride_wn,
                                                     BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if MODE == 0:  # prec (max_num_imprecise_acc = min(128, BLOCK_K)) ; G unused
        for _ in range(0, K, BLOCK_K):
            acc = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs), acc, max_num_imprecise_acc=G)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    elif MODE == 1:  # fast
        for _ in range(0, K, BLOCK_K):
            acc = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    elif MODE == 2:  # manual1
        for _ in range(0, K, BLOCK_K):
            part = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs))
            acc += part
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    elif MODE == 3:  # pingpong
        pb = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for _ in range(0, K, 2 * BLOCK_K):
            pa = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs))
            acc += pb
            pb = tl.dot(tl.load(x_ptrs + BLOCK_K), tl.load(w_ptrs + BLOCK_K))
            acc += pa
            x_ptrs += 2 * BLOCK_K
            w_ptrs += 2 * BLOCK_K
        acc += pb
    else:  # group G: G blocks chained fast, then promoted
        for _ in range(0, K, G * BLOCK_K):
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for _ in tl.static_range(G):
                part = tl.dot(tl.load(x_ptrs), tl.load(w_ptrs), part)
                x_ptrs += BLOCK_K
                w_ptrs += BLOCK_K
            acc += part
    store_scaled_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, xs_ptr, out_ptr, stride_om, False)


MODES = {"prec128": 0, "fast": 1, "prec256": 0, "manual1": 2, "pingpong": 3, "group2": 4}


def configs(mode):
    base = [  # (BM, BN, BK, warps, stages)
        (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 256, 128, 8, 4), (128, 128, 128, 8, 4),
        (128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 256, 128, 4, 3),
        (128, 128, 64, 8, 5), (64, 128, 64, 4, 6),
    ]
    if mode == "prec256":
        return [(128, 128, 256, 8, 3), (128, 256, 256, 8, 2), (64, 128, 256, 4, 3), (128, 64, 256, 4, 3),
                (256, 128, 256, 8, 2)]
    return base


def launch(mode, cfg, xq, xs, wq, ws, out):
    BM, BN, BK, nw, ns = cfg
    M, K = xq.shape
    N = wq.shape[0]
    G = {"prec128": min(128, BK), "prec256": min(256, BK), "group2": 2}.get(mode, 1)
    step = {"pingpong": 2 * BK, "group2": 2 * BK}.get(mode, BK)
    if K % step:
        raise ValueError("K")
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    gemm[grid](xq, xs, wq, ws, out, M, N, K, xq.stride(0), wq.stride(0), out.stride(0),
               MODE=MODES[mode], G=G, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=8,
               num_warps=nw, num_stages=ns)
    return out


def quant_rows(x):
    s = x.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def main(out_path):
    torch.manual_seed(0)
    dev = "cuda"
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "accuracy": [], "speed": []}
    # accuracy: same-sign (all-positive) and randn, vs fp64 product of the same fp8 operands
    for K in (4096, 14336):
        for kind in ("randn", "positive"):
            M, N = 1024, 1024
            x = torch.randn(M, K, device=dev)
            w = torch.randn(N, K, device=dev)
            if kind == "positive":
                x, w = x.abs(), w.abs()
            xq, xs = quant_rows(x)
            wq, ws = quant_rows(w)
            ref = (xq.double() @ wq.double().t()) * xs.double() * ws.double().t()
            row = {"K": K, "kind": kind}
            for mode in MODES:
                cfg = (128, 128, 256, 8, 3) if mode == "prec256" else (128, 128, 128, 8, 3)
                out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
                try:
                    launch(mode, cfg, xq, xs.reshape(-1), wq, ws.reshape(-1), out)
                    row[mode] = ((out.double() - ref).norm() / ref.norm()).item()
                except Exception as e:
                    row[mode] = f"err {type(e).__name__}"
            out = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)
            row["cublas_prec"] = ((out.double() - ref).norm() / ref.norm()).item()
            out = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16,
                                   use_fast_accum=True)
            row["cublas_fast"] = ((out.double() - ref).norm() / ref.norm()).item()
            res["accuracy"].append(row)
            print(json.dumps(row), flush=True)

    shapes = [(1024, 4096, 4096), (4096, 4096, 4096), (1024, 14336, 4096), (4096, 14336, 4096),
              (8192, 4096, 6144), (8192, 4096, 28672), (8192, 14336, 4096)]
    for M, K, N in shapes:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
        xq, xs = quant_rows(x)
        wq, ws = quant_rows(w)
        xs1, ws1 = xs.reshape(-1).contiguous(), ws.reshape(-1).contiguous()
        out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
        row = {"M": M, "K": K, "N": N}
        row["bf16_us"] = do_bench(partial(torch.nn.functional.linear, x, w), rep=60) * 1e3
        for name, fast in (("cublas_prec_us", False), ("cublas_fast_us", True)):
            row[name] = do_bench(partial(torch._scaled_mm, xq, wq.t(), scale_a=xs, scale_b=ws.t(),
                                         out_dtype=torch.bfloat16, use_fast_accum=fast), rep=60) * 1e3
        ref = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)
        for mode in MODES:
            best = None
            for cfg in configs(mode):
                try:
                    launch(mode, cfg, xq, xs1, wq, ws1, out)
                    torch.cuda.synchronize()
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    if err > 2e-2:
                        row.setdefault("bad", []).append([mode, cfg, err])
                        continue
                    t = do_bench(partial(launch, mode, cfg, xq, xs1, wq, ws1, out), rep=40) * 1e3
                except Exception as e:
                    row.setdefault("fail", []).append([mode, cfg, type(e).__name__])
                    continue
                if best is None or t < best[0]:
                    best = (t, cfg)
            row[mode + "_us"] = best[0] if best else None
            row[mode + "_cfg"] = best[1] if best else None
        res["speed"].append(row)
        short = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
                 if k.endswith("_us") or k in "MKN"}
        print(json.dumps(short), flush=True)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


def markdown(res) -> str:
    modes = list(MODES)
    lines = ["| M | K | N | bf16 us | cuBLAS precise | cuBLAS fast | " + " | ".join(modes) + " |",
             "|---" * (6 + len(modes)) + "|"]
    for r in res["speed"]:
        cells = [f"{r['bf16_us']:.1f}"] + [f"{r[k + '_us']:.1f} ({r['bf16_us'] / r[k + '_us']:.2f}x)"
                                           if r.get(k + "_us") else "-"
                                           for k in ["cublas_prec", "cublas_fast", *modes]]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | " + " | ".join(cells) + " |")
    lines += ["", "| K | inputs | cuBLAS precise | cuBLAS fast | " + " | ".join(modes) + " |",
              "|---" * (4 + len(modes)) + "|"]
    for r in res["accuracy"]:
        cells = [f"{r[k]:.1e}" if isinstance(r[k], float) else str(r[k])
                 for k in ["cublas_prec", "cublas_fast", *modes]]
        lines.append(f"| {r['K']} | {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="fp8_accumulation.json", help="JSON results path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("fp8_accumulation.py needs a CUDA GPU (sm_90 for the wgmma modes)")
    main(args.out)
    with open(args.out) as f:
        print(markdown(json.load(f)))
