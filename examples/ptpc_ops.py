"""PTPC-FP8 linear in a few lines: quantize a weight once, run ptpc_linear, compare with bf16.

    python examples/ptpc_ops.py            # CPU (torch reference kernels) or GPU (Triton / AITER)

Prints the relative error of PTPC-FP8 (per-token x per-channel scales) and of classic
per-tensor FP8 against the exact product, on plain inputs, on inputs with outlier
channels and on tokens of very different norms: over the whole output, and on the worst token (the whole-output
error is dominated by the largest tokens; per-tensor FP8 loses the small ones, PTPC scales each token on its own);
on a GPU also the time of each against bf16 F.linear.
"""

import torch
import torch.nn.functional as F

import rocm_attn
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel, quantize_weight_per_tensor
from rocm_attn.testing import rel_err


def worst_token_err(out: torch.Tensor, exact: torch.Tensor) -> float:
    """max over tokens (rows) of ||out - exact|| / ||exact||."""
    return ((out.double() - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item()


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plat = rocm_attn.get_platform()
    print(f"platform: {plat.kind} ({plat.device_name}), fp8: {plat.fp8_dtype} max {plat.fp8_max}")
    torch.manual_seed(0)
    M, K, N = (4096, 4096, 4096) if device == "cuda" else (64, 1024, 512)
    x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=device, dtype=torch.bfloat16) * 0.02
    bias = torch.randn(N, device=device, dtype=torch.bfloat16)

    # Once, at load time: fp8 weight + one fp32 scale per output channel.
    wq, w_scale = quantize_weight_per_channel(w)
    wq_t, w_scale_t = quantize_weight_per_tensor(w)

    # Per call: per-token activation quant + FP8 GEMM with the scales fused in the epilogue.
    out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)
    print(f"ptpc_linear: x {tuple(x.shape)} {x.dtype} -> {tuple(out.shape)} {out.dtype}")

    outlier_channels = x.clone()
    outlier_channels[:, ::97] *= 1000  # a few hidden dims 1000x the rest, in every token
    token_spread = x * torch.logspace(-3, 3, M, device=device, dtype=torch.bfloat16)[:, None]
    cases = (("randn", x), ("outlier channels x1000", outlier_channels), ("token norms 1e-3..1e3", token_spread))
    for name, xin in cases:
        # no bias here: a bias of ~1 would hide what happens to the products of the small tokens
        exact = xin.double() @ w.double().t()
        outs = {
            "bf16 F.linear": F.linear(xin, w),
            "PTPC-FP8": torch.ops.rocm_attn.ptpc_linear(xin, wq, w_scale),
            "per-tensor FP8": torch.ops.rocm_attn.fp8_per_tensor_linear(xin, wq_t, w_scale_t),
        }
        print(f"relative error vs the exact product, {name} (whole output / worst token): "
              + ", ".join(f"{k} {rel_err(o, exact):.2e} / {worst_token_err(o, exact):.2e}" for k, o in outs.items()))

    if device == "cuda":
        import triton.testing

        # one buffer timed over and over: the weight stays in L2 where it fits (the bf16 one at M = 1 too);
        # benchmarks/bench_linear.py rotates its inputs beyond L2 and is the measurement of record
        print("timings below: warm L2, one buffer (benchmarks/bench_linear.py rotates inputs beyond L2)")

        def bench(fn):
            fn()
            return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")

        t_bf16 = bench(lambda: F.linear(x, w, bias))
        t_ptpc = bench(lambda: torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias))
        print(f"M={M} K={K} N={N}: bf16 {t_bf16 * 1e3:.0f} us, ptpc_linear {t_ptpc * 1e3:.0f} us "
              f"({t_bf16 / t_ptpc:.2f}x)")
        x1 = x[:1]
        t_bf16 = bench(lambda: F.linear(x1, w, bias))
        t_ptpc = bench(lambda: torch.ops.rocm_attn.ptpc_linear(x1, wq, w_scale, bias))
        print(f"M=1 (decode): bf16 {t_bf16 * 1e3:.1f} us, ptpc_linear {t_ptpc * 1e3:.1f} us ({t_bf16 / t_ptpc:.2f}x)")


if __name__ == "__main__":
    main()
