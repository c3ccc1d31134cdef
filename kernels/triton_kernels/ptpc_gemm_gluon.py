"""Gluon (Triton's low-level dialect) warp-specialized FP8 GEMM for Hopper with the PTPC epilogue.

Why it exists: precise FP8 accumulation. Hopper's FP8 wgmma accumulates in reduced precision, so a
"precise" GEMM adds each 128-wide K block's partial product into an fp32 accumulator on the CUDA cores.
Plain Triton (``max_num_imprecise_acc=128``) serializes that add behind each block's MMA, which costs
~20% against cuBLASLt's precise GEMM (benchmarks/RESULTS.md, Session 9). Here two consumer warpgroups
(64 rows each) run independently and a one-warp producer streams the tiles with TMA, so one
warpgroup's fp32 adds overlap the other's MMAs.

Tile: 128 x (HALF_N * HALVES) x 128, HALF_N 128 (or 64 at mid M, where wider tiles would leave SMs idle:
takes_narrow_tiles). Each consumer warpgroup owns 64 rows and HALVES fp32 accumulators of 64 x HALF_N; per
K block it runs wgmma into a scratch accumulator (use_acc=False) and adds it into its accumulator in fp32.
Epilogue: out = acc * x_scale[m] * w_scale[n] (+ bias[n]), stored as out's dtype.

Needs sm_90 and a Triton with Gluon (3.6 and newer); `available()` says whether it can run.
On an H100 it is as precise as cuBLASLt's precise GEMM and 5-9% faster on Llama-3-8B shapes at M >= 1024
(benchmarks/RESULTS.md, Session 11; benchmarks/bench_gluon_gemm.py): ptpc_scaled_mm's triton provider runs it
there (ptpc_gemm_gluon_launch), and auto prefers it to cuBLASLt. The output goes through shared memory and
one TMA store per 64 x 128 half: storing straight from the MMA layout cost ~15%.
"""

from __future__ import annotations

import functools

import torch

from . import launch_cache

try:  # Gluon ships with Triton >= 3.5; the CPU CI never launches this kernel
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # the TMA copies were renamed (Triton 3.6: async_copy_global_to_shared / _shared_to_global; newer:
    # async_load / async_store)
    tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - older Triton
    HAVE_GLUON = False

BLOCK_M = 128  # two consumer warpgroups of 64 rows
HALF_N = 128  # one wgmma accumulator: 64 x 128 fp32 = 64 registers per thread
BLOCK_K = 128  # one promotion per 128 K elements, as cuBLASLt's precise mode
CONSUMER_REGS = 232  # registers per consumer thread after setmaxnreg (the producer warp keeps 24)
NARROW_HALF_N = 64  # the mid-M tiles' width (one 64 x 64 wgmma accumulator per warpgroup)
PDL_MAX_K = 8192  # pdl_pays: up to this K the pair pays at any M of one round of tiles (Session 22)
PDL_MAX_M_LONG_K = 128  # and above it, up to this M (Session 23)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The GPU's SM count (cached per device)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, cols: int, dtype_name: str):
    """The NVMMA shared layout of one TMA box (made once: building it per launch costs host time)."""
    return gl.NVMMASharedLayout.get_default_for([rows, cols], getattr(gl, dtype_name))


@functools.lru_cache(maxsize=None)
def _available_on(index: int | None) -> bool:
    if not HAVE_GLUON or torch.version.hip or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(index) == (9, 0)


def available(device: torch.device | str | None = None) -> bool:
    """True on an sm_90 CUDA device with Gluon importable (cached per device: it is asked on every call)."""
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return False
        return _available_on(device.index)
    return _available_on(None)


if HAVE_GLUON:
    # the same numbers as constexprs, for the kernels (a jit function reads only constexpr globals)
    _BLOCK_K = gl.constexpr(BLOCK_K)
    _BLOCK_M = gl.constexpr(BLOCK_M)

    # Worker partitions get their arguments as runtime values (constexprs do not survive the trip), so the
    # tile configuration travels in the shared-memory types: STAGES = ready barriers, HALVES = B buffers /
    # STAGES, HN (HALF_N) = a B buffer's rows.
    # The kernel is persistent: program p takes tiles p, p + P, ... (P = programs); every partition walks the
    # same tiles and K blocks in the same order, and one running count `it` of K blocks names the stage and
    # barrier phase, so the producer fills the next tile's stages while the consumers run an epilogue.

    @gluon.jit
    def _tile_origin(tile, M, N, group_m, HALVES: gl.constexpr, HN: gl.constexpr):
        # grouped order: group_m row tiles share each column tile of B while it is in L2
        tiles_m = gl.cdiv(M, _BLOCK_M)
        tiles_n = gl.cdiv(N, HN * HALVES)
        per_group = group_m * tiles_n
        first_m = (tile // per_group) * group_m
        group_size = gl.minimum(tiles_m - first_m, group_m)
        pid_m = first_m + (tile % per_group) % group_size
        pid_n = (tile % per_group) // group_size
        return pid_m * _BLOCK_M, pid_n * HN * HALVES

    @gluon.jit
    def _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, group_m,
                  xs_ptr, ws_ptr, bias_ptr, c_desc, c_bufs, has_bias):
        # one warp: waits for a free stage, then TMA-loads A (two 64-row halves) and B (HALVES x 128 rows)
        STAGES: gl.constexpr = ready.type.shape[0]
        HALVES: gl.constexpr = b_bufs.type.shape[0] // STAGES
        HN: gl.constexpr = b_bufs.type.shape[1]
        num_tiles = gl.cdiv(M, _BLOCK_M) * gl.cdiv(N, HN * HALVES)
        k_tiles = gl.cdiv(K, _BLOCK_K)
        # sm_90 PDL: launched with launch_pdl after a kernel that calls launch_dependents (ptpc_linear's
        # quant), this kernel may start while that one finishes; every load (A, B, the scales the consumers
        # read) comes after this wait, which returns once the previous kernel is done and its writes are
        # visible (at once without PDL)
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)
        it = 0
        for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, group_m, HALVES, HN)
            for kt in range(k_tiles):
                s = it % STAGES
                mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # barriers start "free" (phase 1 done)
                bar = ready.index(s)
                mbarrier.expect(bar, 2 * a_desc.block_type.nbytes + HALVES * b_desc.block_type.nbytes)
                k = kt * _BLOCK_K
                tma_load(a_desc, [off_m, k], bar, a_bufs.index(2 * s))
                tma_load(a_desc, [off_m + 64, k], bar, a_bufs.index(2 * s + 1))
                for h in gl.static_range(HALVES):
                    tma_load(b_desc, [off_n + h * HN, k], bar, b_bufs.index(HALVES * s + h))
                it += 1

    @gluon.jit
    def _store_half(acc, row0, off_n, xs, ws_ptr, bias_ptr, c_desc, c_buf, N, has_bias, layout: gl.constexpr,
                    PENDING: gl.constexpr):
        cols = off_n + gl.arange(0, c_buf.type.shape[1], layout=gl.SliceLayout(0, layout))
        n_ok = cols < N
        ws = gl.load(ws_ptr + cols, mask=n_ok, other=0.0)
        out = acc * gl.expand_dims(xs, 1) * gl.expand_dims(ws, 0)
        # the bias as a masked load, not a branch: Triton 3.6 fails to lower a runtime `if` on an MMA-layout
        # tensor inside a warp-specialized partition (and has_bias is a runtime value there)
        bias = gl.load(bias_ptr + cols, mask=n_ok & has_bias, other=0.0).to(gl.float32)
        out = out + gl.expand_dims(bias, 0)
        # through shared memory and one TMA store (it clips rows >= M, columns >= N): far fewer instructions
        # than scattered stores from the MMA layout, and asynchronous, so the next tile's MMAs start at once
        tma.store_wait(PENDING)  # this warpgroup's last store out of c_buf is done (PENDING: its other buffers')
        c_buf.store(out.to(c_desc.dtype))
        fence_async_shared()
        tma_store(c_desc, [row0, off_n], c_buf)

    @gluon.jit
    def _consumer(a_bufs, b_bufs, ready, empty, M, N, K, group_m,
                  xs_ptr, ws_ptr, bias_ptr, c_desc, c_bufs, has_bias, WG: gl.constexpr):
        STAGES: gl.constexpr = ready.type.shape[0]
        HALVES: gl.constexpr = b_bufs.type.shape[0] // STAGES
        C_BUFS: gl.constexpr = c_bufs.type.shape[0] // 2  # output staging buffers per warpgroup (1 or HALVES)
        HN: gl.constexpr = b_bufs.type.shape[1]
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, HN, 32])
        num_tiles = gl.cdiv(M, _BLOCK_M) * gl.cdiv(N, HN * HALVES)
        k_tiles = gl.cdiv(K, _BLOCK_K)
        it = 0
        for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, group_m, HALVES, HN)
            acc0 = gl.zeros([64, HN], gl.float32, layout)
            acc1 = gl.zeros([64, HN], gl.float32, layout)
            for kt in range(k_tiles):
                s = it % STAGES
                mbarrier.wait(ready.index(s), (it // STAGES) & 1)
                a = a_bufs.index(2 * s + WG)
                # the K block's product in a scratch accumulator (the wgmma's own reduced-precision sum over
                # 128 elements), then added in fp32: the promotion
                part = warpgroup_mma(a, b_bufs.index(HALVES * s).permute((1, 0)), acc0, use_acc=False,
                                     is_async=True)
                part = warpgroup_mma_wait(0, deps=(part,))
                if HALVES == 1:
                    mbarrier.arrive(empty.index(s), count=1)
                acc0 = acc0 + part
                if HALVES == 2:
                    part = warpgroup_mma(a, b_bufs.index(2 * s + 1).permute((1, 0)), acc1, use_acc=False,
                                         is_async=True)
                    part = warpgroup_mma_wait(0, deps=(part,))
                    mbarrier.arrive(empty.index(s), count=1)
                    acc1 = acc1 + part
                it += 1

            rows = off_m + WG * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, layout))
            xs = gl.load(xs_ptr + rows, mask=rows < M, other=0.0)
            _store_half(acc0, off_m + WG * 64, off_n, xs, ws_ptr, bias_ptr, c_desc, c_bufs.index(WG * C_BUFS),
                        N, has_bias, layout, C_BUFS - 1)
            if HALVES == 2:
                _store_half(acc1, off_m + WG * 64, off_n + HN, xs, ws_ptr, bias_ptr, c_desc,
                            c_bufs.index(WG * C_BUFS + C_BUFS - 1), N, has_bias, layout, C_BUFS - 1)
        tma.store_wait(0)

    @gluon.jit
    def _consumer_wg0(a_bufs, b_bufs, ready, empty, M, N, K, group_m,
                      xs_ptr, ws_ptr, bias_ptr, c_desc, c_bufs, has_bias):
        _consumer(a_bufs, b_bufs, ready, empty, M, N, K, group_m, xs_ptr, ws_ptr, bias_ptr, c_desc,
                  c_bufs, has_bias, 0)

    @gluon.jit
    def _consumer_wg1(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, group_m,
                      xs_ptr, ws_ptr, bias_ptr, c_desc, c_bufs, has_bias):
        # the producer's signature (worker partitions share one)
        _consumer(a_bufs, b_bufs, ready, empty, M, N, K, group_m, xs_ptr, ws_ptr, bias_ptr, c_desc,
                  c_bufs, has_bias, 1)

    @gluon.jit
    def _ptpc_gemm_gluon_kernel(a_desc, b_desc, c_desc, xs_ptr, ws_ptr, bias_ptr, M, N, K,
                                HALVES: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                                HAS_BIAS: gl.constexpr, CONSUMER_REGS: gl.constexpr, C_BUFS: gl.constexpr,
                                HALF_N: gl.constexpr):
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [2 * STAGES, 64, _BLOCK_K], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [HALVES * STAGES, HALF_N, _BLOCK_K], b_desc.layout)
        c_bufs = gl.allocate_shared_memory(c_desc.dtype, [2 * C_BUFS, 64, HALF_N], c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=2)  # both consumer warpgroups release a stage

        group_m = GROUP_M
        has_bias = HAS_BIAS
        common = (ready, empty, M, N, K, group_m, xs_ptr, ws_ptr, bias_ptr, c_desc, c_bufs, has_bias)
        gl.warp_specialize([
            (_consumer_wg0, (a_bufs, b_bufs) + common),
            (_consumer_wg1, (a_desc, b_desc, a_bufs, b_bufs) + common),
            (_producer, (a_desc, b_desc, a_bufs, b_bufs) + common),
        ], [4, 1], [CONSUMER_REGS, 24])


def takes_shape(M: int, K: int, N: int) -> bool:
    """TMA's 16-byte strides: K a multiple of 16 (fp8 rows), N of 8 (bf16 / fp16 output rows)."""
    return M > 0 and K > 0 and N > 0 and K % 16 == 0 and N % 8 == 0


@functools.lru_cache(maxsize=4096)
def pick_halves(M: int, N: int, sms: int) -> int:
    """128 x 256 tiles (2 halves) unless the 128 x 128 ones fill the SMs' last round of tiles so much
    better that it pays for their ~10% lower throughput (H100, Session 11: N = 6144 at M = 1024, 192 wide
    tiles on 132 SMs = 1.45 rounds, ran 44.4 us with narrow tiles against 51.1)."""
    def rounds(halves):
        return launch_cache.cdiv(launch_cache.cdiv(M, BLOCK_M) * launch_cache.cdiv(N, HALF_N * halves), sms)

    return 1 if rounds(1) / 0.9 < 2 * rounds(2) else 2


@functools.lru_cache(maxsize=4096)
def takes_narrow_tiles(M: int, N: int, sms: int) -> bool:
    """Whether 128 x 64 tiles run this mid-M GEMM (M of a few hundred): where they fit in one round on the
    SMs. A 128 x 128 tile runs at the SM's fp8 tensor-core peak (H100, Session 21: 0.31 us per 128-deep K
    block), so at M = 128, N = 4096 its 32 programs leave 100 SMs idle; the 64 narrow ones ran 11.8 us against
    cuBLASLt's 13.6 (K = 14336: 29.1 against 36.4), and 1.21-1.32x cuBLASLt at N = 1024-2048 (16-32 tiles).
    Past one round they lost to cuBLASLt (M = 256, N = 6144: 192 tiles, 20.1 us against 16.0). Splitting K
    instead of narrowing the tiles lost everywhere: the partials' reduction cost ~4.5 us per call."""
    tiles = launch_cache.cdiv(M, BLOCK_M) * launch_cache.cdiv(N, NARROW_HALF_N)
    return tiles <= sms


def _auto_config(M: int, N: int, sms: int) -> tuple[int, int, int, int]:
    """(halves, half_n, stages, out_buffers) ptpc_gemm_gluon_launch runs: at M >= 1024, 3 stages and two
    output buffers per warpgroup, which measured best on an H100 (Session 11: an interleaved A/B with
    cuBLASLt, benchmarks/results/h100-2026-11-22/s11/h); below, the narrow tiles where takes_narrow_tiles says
    so (8 stages fill shared memory)."""
    if takes_narrow_tiles(M, N, sms):
        return 1, NARROW_HALF_N, 8, 1
    halves = pick_halves(M, N, sms)
    return (halves, HALF_N) + ((3, 2) if halves == 2 else (6, 1))


@functools.lru_cache(maxsize=4096)
def pdl_pays(M: int, K: int, N: int, sms: int) -> bool:
    """Whether ptpc_linear launches its quant and this GEMM as a programmatic-dependent-launch pair (sm_90
    PDL: the quant lets the GEMM's programs start on the SMs it frees, and the GEMM waits for the quant's
    output before its first load). Measured on an H100: it pays where the GEMM is one round of tiles and either
    K <= 8192 (Session 22, three runs: K = N = 4096 at M = 128 / 256 / 1024 14.5 -> 13.7, 16.1 -> 14.7,
    34.8 -> 33.0-34.2 us; N = 6144 and N = 1024 at M = 128 0.8-0.9 us less) or M <= 128 (Session 23, two runs:
    K = 14336, M = 128: 34.3 -> 33.1-33.2 us). At K = 14336 and M = 256 / 512 it cost 5 / 5.6 us, at M = 1024
    -0.5 to +2 us (Session 23, benchmarks/results/h100-2026-11-23/s23/pdl_*.json); past one round of tiles
    1-5% (Session 22: N = 28672, M = 4096: 824 -> 857 us)."""
    halves, half_n, _, _ = _auto_config(M, N, sms)
    tiles = launch_cache.cdiv(M, BLOCK_M) * launch_cache.cdiv(N, half_n * halves)
    return (K <= PDL_MAX_K or M <= PDL_MAX_M_LONG_K) and tiles <= sms


def ptpc_gemm_gluon_launch(xq, x_scale, wq, w_scale, bias, out_dtype, pdl: bool = False):
    """The ptpc_scaled_mm triton provider's entry (precise accumulation): operands as prepare_operands
    leaves them, the tile configuration from _auto_config. pdl: launch as the dependent of a PDL pair (the
    kernel before it, ptpc_linear's quant, called launch_dependents; pdl_pays says where that is faster)."""
    from .ptpc_gemm import prepare_operands

    ops, out = prepare_operands(xq, x_scale, wq, w_scale, bias, out_dtype)
    if ops is None:
        return out
    xq, xs, wq, ws, bias = ops
    M, N = out.shape
    halves, half_n, stages, out_buffers = _auto_config(M, N, _sm_count(out.device.index))
    # the provider's gate (ptpc_scaled_mm.gluon_takes) checked what launch() would check: launch unchecked
    return _launch_checked_inputs(xq.contiguous(), xs, wq.contiguous(), ws, bias, out, halves=halves,
                                  stages=stages, group_m=16, consumer_regs=CONSUMER_REGS,
                                  out_buffers=out_buffers, half_n=half_n, pdl=pdl)


def launch(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
           bias: torch.Tensor | None, out: torch.Tensor,
           halves: int = 2, stages: int = 4, group_m: int = 8, consumer_regs: int = CONSUMER_REGS,
           out_buffers: int = 1, half_n: int = HALF_N) -> torch.Tensor:
    """out[M, N] = (xq @ wq^T) * x_scale * w_scale^T (+ bias). xq [M, K], wq [N, K] fp8 (e4m3fn), K-contiguous,
    K a multiple of 16 (TMA's 16-byte strides); x_scale [M] / w_scale [N] fp32 contiguous.
    A tile is 128 rows x (halves * half_n) columns, half_n 64 or 128 (narrow: more programs at mid M)."""
    if not available(xq.device):
        raise RuntimeError("ptpc_gemm_gluon needs an sm_90 CUDA GPU and a Triton with Gluon")
    if xq.dtype != torch.float8_e4m3fn or wq.dtype != torch.float8_e4m3fn:
        raise TypeError(f"ptpc_gemm_gluon takes float8_e4m3fn operands, got {xq.dtype} and {wq.dtype}")
    M, K = xq.shape
    N = wq.shape[0]
    if wq.shape[1] != K or K % 16 or N % 8 or not (xq.is_contiguous() and wq.is_contiguous()):
        raise ValueError(f"ptpc_gemm_gluon: need contiguous xq [M, K], wq [N, K], K % 16 == 0, N % 8 == 0 (TMA's "
                         f"16-byte strides); got {tuple(xq.shape)} and {tuple(wq.shape)}")
    if out.shape != (M, N) or not out.is_contiguous() or out.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"ptpc_gemm_gluon: out must be a contiguous bf16/fp16 [{M}, {N}] tensor")
    if half_n not in (64, 128):
        raise ValueError(f"ptpc_gemm_gluon: half_n must be 64 or 128, got {half_n}")
    return _launch_checked_inputs(xq, x_scale, wq, w_scale, bias, out, halves, stages, group_m, consumer_regs,
                                  out_buffers, half_n)


def _launch_checked_inputs(xq, x_scale, wq, w_scale, bias, out, halves, stages, group_m, consumer_regs,
                           out_buffers, half_n=HALF_N, pdl=False):
    """launch() after its checks (the triton provider's gate has made the same ones)."""
    M, K = xq.shape
    N = wq.shape[0]
    tiles = launch_cache.cdiv(M, BLOCK_M) * launch_cache.cdiv(N, half_n * halves)
    a_desc = TensorDescriptor.from_tensor(xq, [64, BLOCK_K], _smem_layout(64, BLOCK_K, "float8e4nv"))
    b_desc = TensorDescriptor.from_tensor(wq, [half_n, BLOCK_K], _smem_layout(half_n, BLOCK_K, "float8e4nv"))
    out_name = "bfloat16" if out.dtype == torch.bfloat16 else "float16"
    c_desc = TensorDescriptor.from_tensor(out, [64, half_n], _smem_layout(64, half_n, out_name))
    device_index = xq.device.index  # a CUDA tensor's device has its index
    grid = (min(tiles, _sm_count(device_index)),)
    bias_arg = bias if bias is not None else w_scale
    args = (a_desc, b_desc, c_desc, x_scale, w_scale, bias_arg, M, N, K)
    constexprs = dict(HALVES=halves, STAGES=stages, GROUP_M=group_m, HAS_BIAS=bias is not None,
                      CONSUMER_REGS=consumer_regs, C_BUFS=out_buffers, HALF_N=half_n)
    # the JIT launch costs ~80 us of host time per call, more than cuBLASLt's whole launch: after the first
    # call of a specialization the compiled kernel is launched directly (launch_cache.py)
    launch_cache.launch(_COMPILED, _ptpc_gemm_gluon_kernel, grid, args, constexprs, num_warps=4,
                        # registers are handed out by warpgroup: 3 groups (two consumers, the 1-warp
                        # producer's) x 128 threads x maxnreg must fit the SM's 64K; setmaxnreg then moves
                        # them to the consumers
                        maxnreg=168, launch_pdl=pdl)
    return out


_COMPILED: dict[tuple, object] = {}  # specialization key -> Triton CompiledKernel (see launch)
