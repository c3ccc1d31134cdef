"""Triton fused small-M kernel for ptpc_linear: per-token quant + PTPC GEMM in ONE launch.

ptpc_linear at M <= 16 (decode) is two launches today: per_token_quant_fp8, then the small-M
GEMM (ptpc_gemm_small_m.py). This kernel takes the bf16/fp16/fp32 activation itself:

1. every program reads its rows' absmax over all of K (the M rows are at most 16 x K x 2 bytes
   and sit in L2), in wide chunks (AMAX_BLOCK_K, a few iterations: the pass is latency bound);
   scale = max(amax * INV_FP8_MAX, SCALE_FLOOR), exactly per_token_quant_fp8's scale;
2. it streams its BLOCK_N weight channels over its slice of K, quantizes each activation tile
   on the fly with per_token_quant_fp8's formula (q = fp8(clamp(div_rn(x, scale), +-fp8_max)),
   IEEE division, the same bits as the quant kernel), and accumulates q @ w in fp32;
3. the epilogue applies x_scale * w_scale (+ bias), as the small-M GEMM does.

So the result equals per_token_quant_fp8 + ptpc_scaled_mm up to fp32 summation order.

Two inner products (USE_DOT, a config key): tl.dot on a BLOCK_M >= 16 tile (its loads pipelined
with cp.async; M = 1 quantizes 15 padding rows too), or a broadcast multiply and sum (GEMV,
BLOCK_M = next_pow2(M), only at M <= GEMV_MAX_M; no cp.async pipelining, so it needs split-K or
wide tiles to keep enough weight bytes in flight). The autotuner picks among both at small M.
Split-K (SPLIT_K > 1) reduces partials with the small-M GEMM's last-arriver scheme and its
per-(device, stream) counters (still one launch); every split program still reads the full
rows for the amax. Programs for N = 4096: 128 at BLOCK_N = 32 (one wave on 132 SMs).

Not timed yet (no GPU in the session that wrote it), so it is opt-in: ptpc_linear.FUSED_SMALL_M_MAX
= 0 keeps the two launches; benchmarks/bench_linear.py's ptpc_linear_fused column times it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from ..platform import fp8_max, triton_interpret
from .ptpc_gemm import PROMOTE_K
from .ptpc_gemm_small_m import _counters, scaled_tile_epilogue

MAX_M = 16
GEMV_MAX_M = 4  # M <= this: broadcast-multiply GEMV (no padding rows to quantize); above: tl.dot
AMAX_TILE = 8192  # elements of x per amax-pass iteration (64 fp32 per thread at 4 warps)


GEMV_MAX_PRODUCTS = 128  # GEMV: BLOCK_M * BLOCK_N * BLOCK_K products a thread holds at most


def _config(use_dot, block_n, block_k, split_k, warps, stages):
    return triton.Config({"USE_DOT": use_dot, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k},
                         num_warps=warps, num_stages=stages)


# Candidates for the autotuner (never timed: the first GPU run picks among them). N = 4096:
# BLOCK_N = 32 is 128 programs (one wave on 132 SMs); split-K multiplies that.
DOT_CONFIGS = [
    _config(True, 32, 256, 1, 4, 3),
    _config(True, 32, 256, 1, 4, 4),
    _config(True, 16, 256, 1, 4, 4),
    _config(True, 32, 512, 1, 4, 3),
    _config(True, 64, 256, 2, 4, 3),
    _config(True, 32, 256, 2, 4, 3),
    _config(True, 64, 256, 4, 4, 3),
]
GEMV_CONFIGS = [
    _config(False, 32, 128, 1, 4, 3),
    _config(False, 32, 512, 1, 8, 1),
    _config(False, 16, 512, 2, 4, 1),
    _config(False, 32, 256, 2, 8, 1),
    _config(False, 16, 256, 4, 4, 1),
    _config(False, 32, 128, 4, 4, 1),
    _config(False, 64, 128, 4, 8, 1),
]
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}


@triton.jit
def _ptpc_linear_small_m_kernel(
    x_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, IMPRECISE_K: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    AMAX_BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_row_base = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm

    # 1. the rows' amax over all of K (per_token_quant_fp8's scale; padding rows get the floor)
    offs_a = tl.arange(0, AMAX_BLOCK_K)
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, AMAX_BLOCK_K):
        a_ok = offs_a < K - k0
        xa = tl.load(x_row_base + k0 + offs_a[None, :], mask=m_ok[:, None] & a_ok[None, :], other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(xa.to(tl.float32)), axis=1))
    x_scale = tl.maximum(amax * INV_FP8_MAX, SCALE_FLOOR)

    # 2. this program's slice of K: quantize x tiles on the fly, accumulate q @ w in fp32
    cols = (offs_n % N).to(tl.int64)  # wrap: valid memory, discarded at the store
    x_rows = x_row_base + offs_k[None, :]
    w_cols = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_begin = pid_k * k_per_split
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_begin + k_per_split, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_cols + k0)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + k0, mask=k_ok[:, None], other=0.0)
        xf = x.to(tl.float32)
        q = tl.clamp(tl.math.div_rn(xf, tl.zeros_like(xf) + x_scale[:, None]), -FP8_MAX, FP8_MAX)
        q = q.to(w_ptr.dtype.element_ty)
        if USE_DOT:
            acc = tl.dot(q, w, acc, max_num_imprecise_acc=IMPRECISE_K)
        else:  # [BLOCK_M, BLOCK_K, 1] * [1, BLOCK_K, BLOCK_N], summed over K: fp8 products are exact in fp32
            acc += tl.sum(q.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)

    # 3. epilogue: scales and bias (split-K: the last program of this column tile reduces)
    scaled_tile_epilogue(acc, x_scale, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, ws_ptr, bias_ptr, out_ptr,
                         part_ptr, count_ptr, pid_n, pid_k, SPLIT_K, HAS_BIAS, BLOCK_M, BLOCK_N)

def _block_m(M: int, use_dot: bool) -> int:
    return max(16, triton.next_power_of_2(M)) if use_dot else triton.next_power_of_2(M)  # tl.dot: >= 16 rows


def _prune(configs, named_args, **kwargs):
    """GEMV configs only at M <= GEMV_MAX_M and within GEMV_MAX_PRODUCTS a thread."""
    M = named_args["M"]

    def fits(c):
        if c.kwargs["USE_DOT"]:
            return True
        products = _block_m(M, False) * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] // (32 * c.num_warps)
        return M <= GEMV_MAX_M and products <= GEMV_MAX_PRODUCTS

    return [c for c in configs if fits(c)] or [c for c in configs if c.kwargs["USE_DOT"]]


_heuristics = triton.heuristics({
    "BLOCK_M": lambda args: _block_m(args["M"], args["USE_DOT"]),
    "EVEN_K": lambda args: args["K"] % (args["BLOCK_K"] * args["SPLIT_K"]) == 0,
    "IMPRECISE_K": lambda args: min(PROMOTE_K, args["BLOCK_K"]),
    "AMAX_BLOCK_K": lambda args: max(args["BLOCK_K"],
                                     min(triton.next_power_of_2(args["K"]), AMAX_TILE // args["BLOCK_M"])),
})
_kernel_fixed = _heuristics(_ptpc_linear_small_m_kernel)
# autotuned over: both inner products (use_dot=None), tl.dot only (True), GEMV only (False)
TUNED_KERNELS = {
    path: triton.autotune(configs=configs, key=["N", "K", "M_BUCKET"],
                          prune_configs_by={"early_config_prune": _prune})(
        _heuristics(_ptpc_linear_small_m_kernel))
    for path, configs in ((None, DOT_CONFIGS + GEMV_CONFIGS), (True, DOT_CONFIGS), (False, GEMV_CONFIGS))
}


def autotuned_config(use_dot: bool | None = None) -> str:
    """The config the autotuner picked last (benchmarks record which path won)."""
    return str(getattr(TUNED_KERNELS[use_dot], "best_config", None))


def ptpc_linear_small_m_launch(x, wq, w_scale, bias=None, config: dict | None = None,
                               use_dot: bool | None = None):
    """ptpc_linear for M <= MAX_M rows in one launch: x [..., K] bf16/fp16/fp32, wq [N, K] fp8
    (e4m3fn / e4m3fnuz), w_scale [N, 1] fp32, bias [N]? -> [..., N] in x's dtype.
    config {"BLOCK_N", "BLOCK_K", "SPLIT_K"[, "num_warps", "num_stages"]} skips autotuning;
    use_dot: True / False restricts the autotuner (or a config without "USE_DOT") to the tl.dot /
    GEMV inner product; None lets it choose (GEMV only at M <= GEMV_MAX_M; a config defaults to tl.dot)."""
    if wq.dtype not in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        raise TypeError(f"ptpc_linear_small_m: wq must be e4m3 fp8, got {wq.dtype}")
    K = x.shape[-1]
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"ptpc_linear_small_m: x has K = {K} features but wq is {tuple(wq.shape)}")
    x2 = x.reshape(math.prod(x.shape[:-1]), K)  # not -1: K may be 0
    M = x2.shape[0]
    if M > MAX_M:
        raise ValueError(f"ptpc_linear_small_m takes M <= {MAX_M} rows, got M = {M}; "
                         "use per_token_quant_fp8 + ptpc_scaled_mm above that")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.reshape(*x.shape[:-1], N)
    if K == 0:  # empty sum: the bias (or zeros)
        out.copy_(bias.to(x.dtype).expand(M, N) if bias is not None else torch.zeros_like(out))
        return out.reshape(*x.shape[:-1], N)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    wq = wq if wq.stride(-1) == 1 else wq.contiguous()
    ws = w_scale.reshape(N).contiguous()
    bias = bias.contiguous() if bias is not None else None

    if use_dot is False and M > GEMV_MAX_M:
        raise ValueError(f"ptpc_linear_small_m: the GEMV path takes M <= {GEMV_MAX_M}, got M = {M}")
    if config is None and triton_interpret():
        config = INTERPRET_CONFIG
    if config is not None:
        config = {"USE_DOT": use_dot is not False, **config}
    tuned = TUNED_KERNELS[use_dot]
    max_split = max(c.kwargs["SPLIT_K"] for c in tuned.configs) if config is None else config["SPLIT_K"]
    counters = _counters(x.device, triton.cdiv(N, 16)) if max_split > 1 else None
    if max_split > 1 and counters is None:  # a CUDA-graph capture with no counters to spare: no split-K
        config, max_split = {"USE_DOT": True, "BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 1,
                             "num_warps": 4, "num_stages": 3}, 1
    partials = torch.empty((max_split, M, N), dtype=torch.float32, device=x.device) if max_split > 1 else out
    fmax = fp8_max(wq.dtype)
    args = (x2, wq, ws, bias if bias is not None else ws, out, partials,
            counters if counters is not None else ws, M, N, K, triton.next_power_of_2(M),
            x2.stride(0), wq.stride(0), out.stride(0))
    consts = dict(FP8_MAX=fmax, INV_FP8_MAX=inv_fp8_max(fmax), SCALE_FLOOR=scale_floor(fmax),
                  HAS_BIAS=bias is not None)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    if config is not None:
        _kernel_fixed[grid](*args, **consts, **config)
    else:
        tuned[grid](*args, **consts)
    return out.reshape(*x.shape[:-1], N)
