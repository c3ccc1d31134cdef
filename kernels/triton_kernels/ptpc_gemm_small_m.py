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

PDL (sm_90): ptpc_linear launches this kernel with launch_pdl right after its quant, which calls
launch_dependents, so the launch overlaps the quant's run; the kernel's griddepcontrol.wait comes before
its first read (ptpc_linear._pdl_pair says where).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from . import launch_cache
from .ptpc_gemm import imprecise_k, prepare_operands, store_scaled_tile


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
# (M bucket, N, K) -> {"BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages"} (+ "pdl": False where the
# PDL launch was measured slower; added by hand, as were the 6 stages at K = N = 4096, M <= 16: Session 24,
# 9.2 / 9.4 us against 9.7 / 10.1 with 4), M bucket a power of two; an M takes the entry of the smallest
# bucket >= M. Shapes not listed are autotuned over CONFIGS.
TUNED: dict[tuple[int, int, int], dict] = {
    (1, 4096, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 6},
    (16, 4096, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 6},
    (64, 4096, 4096): {'BLOCK_N': 16, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (16, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (64, 6144, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 28672, 4096): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 4, 'num_warps': 4, 'num_stages': 3},
    (16, 28672, 4096): {'BLOCK_N': 16, 'BLOCK_K': 512, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 3},
    (64, 28672, 4096): {'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
    (1, 4096, 14336): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 2, 'num_warps': 4, 'num_stages': 3},
    # pdl False: launched plainly even in ptpc_linear's PDL pair (Session 24, three H100 runs: 28.1-28.3 us
    # plain, 28.6-29.0 with PDL; every other entry gained 0.4-0.8 us)
    (16, 4096, 14336): {'BLOCK_N': 32, 'BLOCK_K': 512, 'SPLIT_K': 2, 'num_warps': 4, 'num_stages': 3,
                        'pdl': False},
    (64, 4096, 14336): {'BLOCK_N': 16, 'BLOCK_K': 256, 'SPLIT_K': 1, 'num_warps': 4, 'num_stages': 4},
}
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}
MAX_M = 64


@triton.jit
def split_k_epilogue(acc, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, xs_ptr, ws_ptr, bias_ptr, out_ptr,
                     part_ptr, count_ptr, pid_n, pid_k,
                     SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """out = acc * x_scale * w_scale (+ bias) for one [BLOCK_M, BLOCK_N] tile (the tiled GEMM's
    store_scaled_tile). Split-K: each program stores its fp32 partial ([SPLIT_K, M, N]) and the last one
    to arrive at this column tile reduces them in a fixed order, then stores the scaled sum."""
    if SPLIT_K == 1:
        store_scaled_tile(acc, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)
    else:
        # partials: [SPLIT_K, M, N] fp32; the last program of this column tile reduces them
        out_mask = m_ok[:, None] & n_ok[None, :]
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
            store_scaled_tile(total, offs_m, offs_n, M, N, xs_ptr, ws_ptr, bias_ptr, out_ptr, stride_om, HAS_BIAS)
            tl.atomic_xchg(count_ptr + pid_n, 0)  # ready for the next call / graph replay


@triton.jit
def _ptpc_gemm_small_m_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, FAST_ACCUM: tl.constexpr, EVEN_K: tl.constexpr, IMPRECISE_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    PDL: tl.constexpr = False,
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
    if PDL:
        # sm_90 programmatic dependent launch: launched with launch_pdl, this kernel's programs may be
        # resident while the kernel before it (ptpc_linear's activation quant) finishes; every read and write
        # comes after this wait, which returns once that kernel is done and its writes are visible. (Loading
        # the first weight chunks before the wait, or asking L2 for the whole weight slice, was slower:
        # Session 24, benchmarks/experiments_s24.)
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_begin + k_per_split, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_rows + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_cols + k0)
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_rows + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + k0, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(x, w, acc, max_num_imprecise_acc=IMPRECISE_K)

    split_k_epilogue(acc, offs_m, offs_n, m_ok, n_ok, M, N, stride_om, xs_ptr, ws_ptr, bias_ptr, out_ptr,
                     part_ptr, count_ptr, pid_n, pid_k, SPLIT_K, HAS_BIAS, BLOCK_M, BLOCK_N)

# the autotuned path (shapes TUNED does not list); a known config is launched with these constexprs computed in
# _launch instead (the same rules)
_heuristics = triton.heuristics({
    "EVEN_K": lambda args: args["K"] % (args["BLOCK_K"] * args["SPLIT_K"]) == 0,
    "IMPRECISE_K": imprecise_k,
})
_kernel_tuned = triton.autotune(configs=CONFIGS, key=["N", "K", "M_BUCKET", "FAST_ACCUM"])(
    _heuristics(_ptpc_gemm_small_m_kernel)
)

def tuned_config(M: int, N: int, K: int) -> dict | None:
    bucket = launch_cache.next_power_of_2(max(M, 1))
    while bucket <= MAX_M:
        if (bucket, N, K) in TUNED:
            return TUNED[bucket, N, K]
        bucket *= 2
    return None


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


@functools.lru_cache(maxsize=None)
def _pdl_capable_on(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_capable(device: torch.device) -> bool:
    """Whether this kernel can run as the dependent of a PDL pair on `device`: a CUDA GPU of sm_90 or later
    (griddepcontrol), not under the interpreter."""
    return device.type == "cuda" and not torch.version.hip and not triton_interpret() and \
        _pdl_capable_on(device.index if device.index is not None else torch.cuda.current_device())


def _launch(x, xs, wq, ws, bias, out, config=None, fast_accum=False, pdl=False):
    M, K = x.shape
    N = wq.shape[0]
    if M > MAX_M:
        raise ValueError(f"the small-M kernel takes M <= {MAX_M}, got M = {M}")
    block_m = max(16, launch_cache.next_power_of_2(M))  # tl.dot needs >= 16 rows
    if config is None:
        config = tuned_config(M, N, K)
    if config is None and triton_interpret():
        config = INTERPRET_CONFIG
    max_split = max(c.kwargs["SPLIT_K"] for c in CONFIGS) if config is None else config["SPLIT_K"]
    counters = _counters(x.device, launch_cache.cdiv(N, 16)) if max_split > 1 else None
    if max_split > 1 and counters is None:  # a capture with no counters to spare: no split-K
        config, max_split = {"BLOCK_N": 16, "BLOCK_K": 512, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}, 1
    partials = torch.empty((max_split, M, N), dtype=torch.float32, device=x.device) if max_split > 1 else out
    args = (x, xs, wq, ws, bias if bias is not None else ws, out, partials,
            counters if counters is not None else ws, M, N, K, block_m,
            x.stride(0), wq.stride(0), out.stride(0))
    consts = dict(HAS_BIAS=bias is not None, FAST_ACCUM=bool(fast_accum), BLOCK_M=block_m)
    if config is None:  # a shape TUNED does not list: Triton's autotuner picks (and keeps) a config
        _kernel_tuned[lambda meta: (launch_cache.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])](*args, **consts)
        return out
    # a known config: the heuristics' constexprs computed here, so that after the first call the compiled
    # kernel is launched directly (launch_cache.py; a decode step runs this kernel for every linear)
    block_n, block_k, split_k = config["BLOCK_N"], config["BLOCK_K"], config["SPLIT_K"]
    pdl = pdl and config.get("pdl", True)
    constexprs = dict(  # the kernel's order
        HAS_BIAS=consts["HAS_BIAS"], FAST_ACCUM=consts["FAST_ACCUM"], EVEN_K=K % (block_k * split_k) == 0,
        IMPRECISE_K=imprecise_k({"FAST_ACCUM": consts["FAST_ACCUM"], "BLOCK_K": block_k}),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
        PDL=pdl,
    )
    options = {k: v for k, v in config.items() if k in ("num_warps", "num_stages")}
    if pdl:
        options["launch_pdl"] = True
    launch_cache.launch(_COMPILED, _ptpc_gemm_small_m_kernel, (launch_cache.cdiv(N, block_n), split_k), args,
                        constexprs, **options)
    return out


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (launch_cache.py)


def ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, out_dtype, config: dict | None = None,
                             fast_accum: bool = False, pdl: bool = False):
    """ptpc_scaled_mm for M <= 64: xq fp8 [M, K] with x_scale [M, 1]. config: see TUNED.
    pdl (sm_90): launch as the dependent of a PDL pair (the kernel before it called launch_dependents:
    ptpc_linear's quant). A shape TUNED does not list runs without PDL (the autotuner times plain
    launches)."""
    ops, out = prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype)
    if ops is None:
        return out
    xq, xs, wq, ws, bias = ops
    return _launch(xq, xs, wq, ws, bias, out, config, fast_accum, pdl)
