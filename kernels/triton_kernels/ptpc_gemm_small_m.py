"""Triton small-M (decode) kernel for ptpc_scaled_mm: weight-bandwidth bound.

At M <= 64 the GEMM reads the [N, K] fp8 weight once and does little math, so the goal is
to stream the weight at near-copy bandwidth. Program (n, s) owns BLOCK_N output channels
and the s-th of SPLIT_K slices of K. The M rows (padded to BLOCK_M >= 16 for tl.dot) are
tiny and re-read from L2 by every program.

Split-K (SPLIT_K > 1) puts 2-8x more programs on the weight when N / BLOCK_N alone would
leave SMs idle (N = 4096: 256 programs of 16 channels on 132 SMs). Each program writes its
fp32 partial sum to a workspace, then bumps a per-column-tile counter (atomic, acq_rel);
the program that arrives last sums the SPLIT_K partials in a fixed order (deterministic),
applies the scales and bias and writes the output, and resets the counter to 0 for the
next call (so the counters stay valid across CUDA-graph replays). One launch, no memset.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from ..platform import triton_interpret
from .per_token_quant import quant_row_fp8
from .ptpc_gemm import imprecise_k, prepare_operands


def _config(block_n, block_k, split_k, warps, stages):
    return triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k},
                         num_warps=warps, num_stages=stages)


CONFIGS = [
    _config(16, 256, 1, 4, 4),
    _config(16, 512, 1, 4, 3),
    _config(32, 256, 1, 4, 4),
    _config(16, 512, 2, 4, 3),
    _config(32, 512, 2, 4, 3),
    _config(32, 256, 4, 4, 4),
    _config(64, 256, 4, 4, 4),
    _config(64, 512, 4, 8, 3),
    _config(128, 256, 8, 8, 3),
]
# Exact configs per shape, from benchmarks/tune_linear.py on an H100 (it prints this table; session 7: inputs
# rotated so the weight streams from HBM, not L2, and each config timed after the quant kernel as ptpc_linear
# runs it - K = N = 4096 at M = 1 / 16 went from 1.23x to 1.30x bf16 in bench_linear):
# (M bucket, N, K) -> {"BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages"},
# M bucket a power of two; an M takes the entry of the smallest bucket >= M. Shapes not
# listed are autotuned over CONFIGS.
TUNED: dict[tuple[int, int, int], dict] = {
    (1, 4096, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (16, 4096, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (64, 4096, 4096): {'BLOCK_N': 16, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (16, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (64, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 28672, 4096): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 4, 'num_warps': 4, 'num_stages': 3},
    (16, 28672, 4096): {'BLOCK_N': 16, 'BLOCK_K': 512, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 3},
    (64, 28672, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 4096, 14336): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 2, 'num_warps': 4, 'num_stages': 3},
    (16, 4096, 14336): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 2, 'num_warps': 4, 'num_stages': 3},
    (64, 4096, 14336): {'BLOCK_N': 16, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
}
# The fused linear (quant in the GEMM launch, FUSE_QUANT): its own winners (PREFETCH_K: weight elements per
# channel loaded before the wait); shapes not listed take TUNED's entry, else FUSED_DEFAULT_CONFIG.
TUNED_FUSED: dict[tuple[int, int, int], dict] = {}
FUSED_DEFAULT_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 1, "num_warps": 4, "num_stages": 4,
                        "PREFETCH_K": 256}
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}
QUANT_BLOCK = 2048  # chunk of a row that the fused kernel's quant step loads at a time (all chunks at once)
MAX_M = 64


@triton.jit
def scaled_tile_epilogue(acc, x_scale, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, ws_ptr, bias_ptr, out_ptr,
                         part_ptr, count_ptr, pid_n, pid_k,
                         SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """out = acc * x_scale * w_scale (+ bias) for one [BLOCK_M, BLOCK_N] tile. Split-K: each program
    stores its fp32 partial ([SPLIT_K, M, N]) and the last one to arrive at this column tile reduces
    them in a fixed order (shared by the small-M GEMM and the fused small-M linear)."""
    out_mask = m_ok[:, None] & n_ok[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    if SPLIT_K == 1:
        w_scale = tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)
        acc = acc * x_scale[:, None] * w_scale[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # partials: [SPLIT_K, M, N] fp32; the last program of this column tile reduces them
        part_tile = offs_m[:, None] * N + offs_n[None, :]  # int32: SPLIT_K * M * N < 2^31
        slice_size = M * N
        tl.store(part_ptr + pid_k * slice_size + part_tile, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in range(0, SPLIT_K):  # fixed order: deterministic
                total += tl.load(part_ptr + s * slice_size + part_tile, mask=out_mask, other=0.0,
                                 cache_modifier=".cg")
            w_scale = tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)
            total = total * x_scale[:, None] * w_scale[None, :]
            if HAS_BIAS:
                total += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(count_ptr + pid_n, 0)  # ready for the next call / graph replay



@triton.jit
def _ptpc_gemm_small_m_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr, src_ptr, sync_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om, stride_src, quant_rows,
    HAS_BIAS: tl.constexpr, FAST_ACCUM: tl.constexpr, EVEN_K: tl.constexpr, IMPRECISE_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    FUSE_QUANT: tl.constexpr, PREFETCH_K: tl.constexpr, QUANT_BLOCK: tl.constexpr, QUANT_CHUNKS: tl.constexpr,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr, X_CACHE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    cols = (offs_n % N).to(tl.int64)  # wrap: valid memory, discarded at the store
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_cols = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]

    # this program's slice of K: whole BLOCK_K chunks (the last slice may run past K: masked)
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if FUSE_QUANT:
        # Fused per-token quant (ptpc_linear in one launch). The first PREFETCH_K elements of this
        # program's weight slice are loaded into registers before anything waits, so that much of the
        # weight streams in while the activations are being quantized (the wait below is a chain of
        # latencies: read x, quantize, publish, see it published, read it back). Programs 0, 1, ...
        # quantize quant_rows rows each into the x_ptr / xs_ptr workspace and count them in sync_ptr[0];
        # every program waits for all M rows, then runs the GEMM as below. The low program ids run
        # first (blocks are dispatched in order), so the wait always ends.
        offs_pk = tl.arange(0, PREFETCH_K)
        w_pre = tl.load(w_ptr + cols[None, :] * stride_wn + (k_begin + offs_pk)[:, None],
                        mask=(k_begin + offs_pk < k_end)[:, None], other=0.0)
        pid = pid_k * tl.num_programs(0) + pid_n
        row_lo = pid * quant_rows
        row_hi = tl.minimum(row_lo + quant_rows, M)
        for r in range(row_lo, row_hi):
            quant_row_fp8(src_ptr + r * stride_src, x_ptr + r * stride_xm, xs_ptr + r,  # M * K < 2^31
                          K, FP8_MAX, INV_FP8_MAX, SCALE_FLOOR, QUANT_BLOCK, QUANT_CHUNKS)
        if row_hi > row_lo:
            tl.debug_barrier()  # every thread's stores land before the count moves
            tl.atomic_add(sync_ptr, row_hi - row_lo, sem="release")
        while tl.atomic_add(sync_ptr, 0, sem="acquire") < M:
            pass
        tl.debug_barrier()
        # X_CACHE ".cg": the workspace was written by other programs of this launch; read it past L1
        x_pre = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + (k_begin + offs_pk)[None, :],
                        mask=m_ok[:, None] & (k_begin + offs_pk < k_end)[None, :], other=0.0,
                        cache_modifier=X_CACHE)
        acc = tl.dot(x_pre, w_pre, acc, max_num_imprecise_acc=IMPRECISE_K)
        k_loop = k_begin + PREFETCH_K  # a multiple of BLOCK_K: the loop's tiles stay aligned
    else:
        k_loop = k_begin
    for k0 in range(k_loop, k_begin + k_per_split, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0, cache_modifier=X_CACHE)
            w = tl.load(w_cols + k0)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0,
                        cache_modifier=X_CACHE)
            w = tl.load(w_cols + k0, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(x, w, acc, max_num_imprecise_acc=IMPRECISE_K)

    x_scale = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0, cache_modifier=X_CACHE)
    scaled_tile_epilogue(acc, x_scale, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, ws_ptr, bias_ptr, out_ptr,
                         part_ptr, count_ptr, pid_n, pid_k, SPLIT_K, HAS_BIAS, BLOCK_M, BLOCK_N)
    if FUSE_QUANT:
        # the last program to finish resets both counts for the next call (or CUDA-graph replay)
        tl.debug_barrier()
        finished = tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel")
        if finished == tl.num_programs(0) * tl.num_programs(1) - 1:
            tl.atomic_xchg(sync_ptr, 0)
            tl.atomic_xchg(sync_ptr + 1, 0)


_heuristics = triton.heuristics({
    "EVEN_K": lambda args: args["K"] % (args["BLOCK_K"] * args["SPLIT_K"]) == 0,
    "IMPRECISE_K": imprecise_k,
})
_kernel_fixed = _heuristics(_ptpc_gemm_small_m_kernel)
_kernel_tuned = triton.autotune(configs=CONFIGS, key=["N", "K", "M_BUCKET", "FAST_ACCUM", "FUSE_QUANT"])(
    _heuristics(_ptpc_gemm_small_m_kernel)
)

def tuned_config(M: int, N: int, K: int, fused: bool = False) -> dict | None:
    table = TUNED_FUSED if fused else TUNED
    bucket = triton.next_power_of_2(max(M, 1))
    while bucket <= MAX_M:
        if (bucket, N, K) in table:
            return table[bucket, N, K]
        bucket *= 2
    return None if not fused else tuned_config(M, N, K)


# Split-K arrival counters: one int32 per column tile, zero between calls (the last program
# of a tile resets it). Kernels on different streams can run at the same time, so each
# (device, stream) gets its own counters: one set per device raced between two streams (a
# silent wrong answer). A CUDA graph keeps the counters of the stream it was captured on.
# The counters are slots cut from a zeroed arena allocated outside any capture, so a capture
# on a fresh stream (torch.cuda.graph's own) still gets a slot without allocating.
COUNTERS_PER_SLOT = 4096  # column tiles of 16: N <= 65536
SLOTS_PER_ARENA = 32
_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}
_FREE_SLOTS: dict[torch.device, list[torch.Tensor]] = {}


def _stream_key(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _new_zeros(device: torch.device, shape) -> torch.Tensor:
    buf = torch.zeros(shape, dtype=torch.int32, device=device)
    if device.type == "cuda":  # zeroed on this stream; other streams will use it: wait once
        torch.cuda.synchronize(device)
    return buf


def reserve_counters(device: torch.device) -> None:
    """Allocate a device's counter arena now, outside any CUDA graph. torch.compile's CUDA graphs
    (cudagraph trees) run their warm-up call inside the graph's private memory pool: an arena
    allocated there would outlive the call and fail the trees' check on untracked allocations."""
    device = torch.device(device)
    if device.type == "cuda" and not _FREE_SLOTS.get(device):
        arena = _new_zeros(device, (SLOTS_PER_ARENA, COUNTERS_PER_SLOT))
        _FREE_SLOTS.setdefault(device, []).extend(arena.unbind(0))


def _counters(device: torch.device, n_tiles: int) -> torch.Tensor | None:
    """Zeroed counters for the current (device, stream), or None while a CUDA graph is being
    captured and none can be had without allocating (that would tie them to the graph's pool)."""
    key = (device, _stream_key(device))
    buf = _COUNTERS.get(key)
    if buf is not None and buf.numel() >= n_tiles:
        return buf
    free = _FREE_SLOTS.setdefault(device, [])
    if n_tiles <= COUNTERS_PER_SLOT and free:
        buf = free.pop()
    elif _capturing(device):
        return None
    elif n_tiles <= COUNTERS_PER_SLOT:
        free.extend(_new_zeros(device, (SLOTS_PER_ARENA, COUNTERS_PER_SLOT)).unbind(0))
        buf = free.pop()
    else:
        buf = _new_zeros(device, (n_tiles,))
    _COUNTERS[key] = buf
    return buf


def _launch(x, xs, wq, ws, bias, out, config=None, fast_accum=False, src=None, fp8_max=None):
    """src None: x / xs are the quantized activations. src [M, K] (bf16/fp16/fp32): the kernel
    quantizes it into x / xs itself (the fused linear); returns None when no sync counters can be
    had (inside a CUDA-graph capture), and the caller runs the two launches instead."""
    M, K = x.shape
    N = wq.shape[0]
    if M > MAX_M:
        raise ValueError(f"the small-M kernel takes M <= {MAX_M}, got M = {M}")
    fused = src is not None
    block_m = max(16, triton.next_power_of_2(M))  # tl.dot needs >= 16 rows
    if config is None:
        config = tuned_config(M, N, K, fused)
    if config is None and triton_interpret():
        config = INTERPRET_CONFIG
    max_split = max(c.kwargs["SPLIT_K"] for c in CONFIGS) if config is None else config["SPLIT_K"]
    col_tiles = triton.cdiv(N, 16)
    # counters: [col_tiles] split-K arrivals, then (fused) 2 sync counts: rows quantized, programs done
    counters = _counters(x.device, col_tiles + 2) if (max_split > 1 or fused) else None
    if fused and counters is None:
        return None
    if max_split > 1 and counters is None:  # a capture with no counters to spare: no split-K
        config, max_split = {"BLOCK_N": 16, "BLOCK_K": 512, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}, 1
    partials = torch.empty((max_split, M, N), dtype=torch.float32, device=x.device) if max_split > 1 else out
    dummy = ws
    sync = counters[col_tiles:] if fused else dummy
    src_arg = src if fused else dummy
    args = (x, xs, wq, ws, bias if bias is not None else dummy, out, partials,
            counters if counters is not None else dummy, src_arg, sync, M, N, K, block_m,
            x.stride(0), wq.stride(0), out.stride(0), src.stride(0) if fused else 0,
            M if triton_interpret() else 1)  # rows per quant program (the interpreter runs programs in turn)
    fmax = fp8_max if fused else 448.0
    quant_block = min(QUANT_BLOCK, triton.next_power_of_2(K))
    consts = dict(HAS_BIAS=bias is not None, FAST_ACCUM=bool(fast_accum), BLOCK_M=block_m, FUSE_QUANT=fused,
                  QUANT_BLOCK=quant_block, QUANT_CHUNKS=triton.cdiv(K, quant_block) if fused else 0, FP8_MAX=fmax,
                  INV_FP8_MAX=inv_fp8_max(fmax), SCALE_FLOOR=scale_floor(fmax), X_CACHE=".cg" if fused else "")
    if fused and config is None:  # no autotuning here (the sync counts): the default one-launch tile
        config = FUSED_DEFAULT_CONFIG
    if "PREFETCH_K" not in (config or {}):
        consts["PREFETCH_K"] = config["BLOCK_K"] if config is not None else 16  # (unused unless fused)
    elif config["PREFETCH_K"] % config["BLOCK_K"]:
        raise ValueError(f"PREFETCH_K={config['PREFETCH_K']} must be a multiple of BLOCK_K={config['BLOCK_K']}")

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    if config is not None:
        _kernel_fixed[grid](*args, **consts, **config)
    else:
        _kernel_tuned[grid](*args, **consts)
    return out


def ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, out_dtype, config: dict | None = None,
                             fast_accum: bool = False):
    """ptpc_scaled_mm for M <= 64: xq fp8 [M, K] with x_scale [M, 1]. config: see TUNED."""
    ops, out = prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype)
    if ops is None:
        return out
    xq, xs, wq, ws, bias = ops
    return _launch(xq, xs, wq, ws, bias, out, config, fast_accum)


def ptpc_linear_small_m_launch(x, wq, w_scale, bias, fp8_max: float, config: dict | None = None,
                               fast_accum: bool = False):
    """ptpc_linear in one launch for x [M, K] (M <= 64, K > 0): per-token quant fused into the small-M
    GEMM. Returns the output [M, N] in x's dtype, or None when it cannot run here now (a CUDA-graph
    capture with no sync counters to spare): the caller then runs quant + GEMM. config: see TUNED
    (plus PREFETCH_K, the weight elements per row loaded before the wait: a multiple of BLOCK_K)."""
    M, K = x.shape
    N = wq.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    xq = torch.empty((M, K), dtype=wq.dtype, device=x.device)
    xs = torch.empty((M,), dtype=torch.float32, device=x.device)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    ws = w_scale.reshape(N).contiguous()
    bias = bias.contiguous() if bias is not None else None
    wq = wq if wq.stride(-1) == 1 else wq.contiguous()
    return _launch(xq, xs, wq, ws, bias, out, config, fast_accum, src=x, fp8_max=fp8_max)
