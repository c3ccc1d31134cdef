"""Triton MLA decode (absorbed form): split-KV over the paged latent cache, then a reduce.

Stage 1: one program = one sequence x one split of its tokens x BLOCK_H heads x one BLOCK_V-wide slice
of the value (latent) dimension. All BLOCK_H heads share each latent-row read (MQA: one latent row per
token serves every head): scores = q_nope_lat @ kv_c^T + q_pe @ k_pe^T over the full L + R, then
acc += p @ kv_c[:, slice]. The (head group, value slice) axis is the fastest grid axis, so the programs
that read the same rows run side by side and the rows come from L2 for all but the first. With one
split the program writes the final output directly; otherwise it writes a partial (normalised fp32
output + log2-sum-exp) and stage 2 merges the splits of each head.

Two variants, one kernel (constexpr switches), chosen per config:
  - classic (BLOCK_V = BLOCK_K = L): q_nope loaded once, one accumulator of BLOCK_H x L;
  - value split (BLOCK_V < L): each program keeps only BLOCK_H x BLOCK_V of the accumulator (half the
    registers at BLOCK_V = L/2, so 64 heads fit one warpgroup's wgmma tile) and recomputes the scores
    (QK is ~half the flops: +50% flops at 2 slices);
  - chunked q (BLOCK_K < L): q_nope is loaded per BLOCK_K-column chunk inside the loop and the scores
    accumulate over chunks, so registers hold mainly the accumulator.

Two more stage-1 kernels join the candidates where they can run (DecodeConfig.kernel): one fed by TMA
(mla_decode_tma.py, Hopper) and a warp-specialized Gluon one (mla_decode_gluon.py, sm_90), the fastest;
ROCM_ATTN_GLUON_MLA=0 leaves the Gluon one out.

Shapes: L = kv_lora_rank (512), R = qk_rope_head_dim (64), both padded to powers of two. On the GPU the
config (kernel, tile, variant, warps, stages) is picked once per (heads, L, R, dtype, candidates) by timing
stage 1 + the reduce for every candidate (candidate_configs), each with its own split count;
`benchmarks/bench_mla.py --tune` sweeps a wider grid.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from . import launch_cache

log = logging.getLogger("rocm_attn")

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _mla_decode_split_kernel(
    Q, CACHE, SEQ_LENS, BLOCK_TABLE, MID_O, MID_LSE, OUT, LSE,
    stride_qb, stride_qh,
    stride_cblk, stride_ctok,
    stride_bt,
    stride_mo_b, stride_mo_h, stride_mo_s,
    stride_ml_b, stride_ml_h,
    stride_ob, stride_oh, stride_lse_h,
    qk_scale, num_heads,
    BLOCK_SIZE: tl.constexpr,
    L: tl.constexpr, R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    head_group = tl.program_id(0) // (BLOCK_L // BLOCK_V)
    v_slice = tl.program_id(0) % (BLOCK_L // BLOCK_V)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)  # runtime: no recompile per split count
    b = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    # every split gets a whole number of BLOCK_N tiles
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_h = head_group * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, BLOCK_L)
    offs_v = v_slice * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    h_ok = offs_h < num_heads
    l_ok = offs_l < L
    v_ok = offs_v < L
    r_ok = offs_r < R

    q_base = Q + b.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
    q_pe = tl.load(q_base + L + offs_r[None, :], mask=h_ok[:, None] & r_ok[None, :], other=0.0)
    if BLOCK_K == BLOCK_L:
        q_nope = tl.load(q_base + offs_l[None, :], mask=h_ok[:, None] & l_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_V], dtype=tl.float32)
    bt_row = BLOCK_TABLE + b.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        n_ok = pos < end
        blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
        row = CACHE + blk * stride_cblk + (pos % BLOCK_SIZE) * stride_ctok  # [BLOCK_N] row pointers
        k_pe = tl.load(row[:, None] + L + offs_r[None, :], mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        if BLOCK_K == BLOCK_L:
            kv = tl.load(row[:, None] + offs_l[None, :], mask=n_ok[:, None] & l_ok[None, :], other=0.0)
            s = tl.dot(q_nope, tl.trans(kv), input_precision=DOT_PREC)
        else:
            # q_nope chunk by chunk from L1/L2: registers hold the accumulator, not q
            s = tl.zeros([BLOCK_H, BLOCK_N], dtype=tl.float32)
            for k0 in tl.static_range(0, BLOCK_L, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < L
                q_chunk = tl.load(q_base + offs_k[None, :], mask=h_ok[:, None] & k_ok[None, :], other=0.0)
                kv_chunk = tl.load(row[:, None] + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                                   other=0.0)
                s = tl.dot(q_chunk, tl.trans(kv_chunk), acc=s, input_precision=DOT_PREC)
        s = tl.dot(q_pe, tl.trans(k_pe), acc=s, input_precision=DOT_PREC)
        s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if BLOCK_K == BLOCK_L and BLOCK_V == BLOCK_L:
            v = kv
        else:  # this program's value slice (same rows: an L2 hit)
            v = tl.load(row[:, None] + offs_v[None, :], mask=n_ok[:, None] & v_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
    hv_ok = h_ok[:, None] & v_ok[None, :]
    # the lse is the same in every value slice: slice 0 writes it
    lse_ok = h_ok & (tl.zeros([BLOCK_H], dtype=tl.int32) + v_slice == 0)
    if num_splits == 1:
        o_ptr = OUT + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_v[None, :]
        tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=hv_ok)
        tl.store(LSE + offs_h * stride_lse_h + b, lse2 * 0.6931471805599453, mask=lse_ok)
    else:
        mo = (MID_O + b.to(tl.int64) * stride_mo_b + offs_h[:, None].to(tl.int64) * stride_mo_h
              + split * stride_mo_s + offs_v[None, :])
        tl.store(mo, out, mask=hv_ok)
        tl.store(MID_LSE + b.to(tl.int64) * stride_ml_b + offs_h * stride_ml_h + split, lse2, mask=lse_ok)


@triton.jit
def _mla_decode_reduce_kernel(
    MID_O, MID_LSE, OUT, LSE,
    stride_mo_b, stride_mo_h, stride_mo_s,
    stride_ml_b, stride_ml_h,
    stride_ob, stride_oh, stride_lse_h,
    num_splits, num_heads,
    L: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_HR: tl.constexpr,
):
    offs_h = tl.program_id(0) * BLOCK_HR + tl.arange(0, BLOCK_HR)
    b = tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    h_ok = offs_h < num_heads
    hl_ok = h_ok[:, None] & (offs_l < L)[None, :]
    lse_row = MID_LSE + b.to(tl.int64) * stride_ml_b + offs_h * stride_ml_h  # [BLOCK_HR]
    mo_row = (MID_O + b.to(tl.int64) * stride_mo_b + offs_h[:, None].to(tl.int64) * stride_mo_h
              + offs_l[None, :])
    m = tl.full([BLOCK_HR], float("-inf"), dtype=tl.float32)
    for s in range(num_splits):
        m = tl.maximum(m, tl.load(lse_row + s, mask=h_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_HR], dtype=tl.float32)
    acc = tl.zeros([BLOCK_HR, BLOCK_L], dtype=tl.float32)
    for s in range(num_splits):
        w = tl.exp2(tl.load(lse_row + s, mask=h_ok, other=float("-inf")) - m_safe)  # 0 for empty splits
        o = tl.load(mo_row + s * stride_mo_s, mask=hl_ok, other=0.0)
        o = tl.where(w[:, None] > 0.0, o, 0.0)  # an empty split's partial is never read as a number
        acc += w[:, None] * o
        total += w
    seen = total > 0.0
    t_safe = tl.where(seen, total, 1.0)
    o_ptr = OUT + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_l[None, :]
    tl.store(o_ptr, (acc / t_safe[:, None]).to(OUT.dtype.element_ty), mask=hl_ok)
    lse = tl.where(seen, (m_safe + tl.log2(t_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + offs_h * stride_lse_h + b, lse, mask=h_ok)


class DecodeConfig(NamedTuple):
    """One stage-1 tile. block_v / block_k None = the whole (padded) L: no value split / q loaded once.
    kernel: "gather" (this file's, rows gathered through pointers), "tma" (mla_decode_tma.py, TMA-fed) or
    "gluon" (mla_decode_gluon.py, warp-specialized; its tile is fixed: 64 heads, 64 tokens, 2 stages)."""

    block_h: int
    block_n: int
    block_v: int | None = None
    block_k: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    kernel: str = "gather"

    @property
    def name(self) -> str:
        return (f"h{self.block_h} n{self.block_n} v{self.block_v or 'L'} k{self.block_k or 'L'} "
                f"w{self.num_warps} s{self.num_stages}{'' if self.kernel == 'gather' else ' ' + self.kernel}")


# Classic tiles. Session 3's five (18-19% of copy at 64 x 4k..32k): more heads per program = fewer re-reads
# of each latent tile from L2 (128 heads / 16 = 8 reads, / 64 = 2), at the price of a BLOCK_H x 512 fp32
# accumulator in registers. Session 10 (H100, one split per sequence at 64 x 4k, see num_splits_for) added
# the two fastest of 21 tiles: h32 n64 w4 (381 us at 64 x 4k, 2.94 ms at 64 x 32k: 32-34% of bench_mla's
# copy) and h64 n64 w8 s1 (413 us), against h64 n32 w8 s2's 443 us, the earlier pick.
CLASSIC_CONFIGS = [DecodeConfig(16, 32, None, None, 4, 2), DecodeConfig(32, 32, None, None, 4, 2),
                   DecodeConfig(32, 32, None, None, 8, 2), DecodeConfig(64, 32, None, None, 8, 2),
                   DecodeConfig(64, 16, None, None, 8, 3), DecodeConfig(32, 64, None, None, 4, 2),
                   DecodeConfig(64, 64, None, None, 8, 1)]
# Value-split and chunked-q tiles (compiled for sm_90 on CPU with `python benchmarks/bench_mla.py --resources`:
# they fit 227 KB of shared memory without spills). Timed in sessions 5 and 10: 1.5-4x slower than the best
# classic tile at 128 heads; kept as candidates for other head counts (the launcher times every entry).
VSPLIT_CONFIGS = [DecodeConfig(64, 32, 256, None, 8, 3), DecodeConfig(64, 16, 256, None, 4, 3),
                  DecodeConfig(64, 16, 128, None, 4, 3), DecodeConfig(128, 16, 256, None, 8, 2),
                  DecodeConfig(64, 16, None, 128, 8, 3), DecodeConfig(64, 32, 256, 128, 8, 2),
                  DecodeConfig(32, 32, None, None, 8, 3)]
DECODE_CONFIGS = CLASSIC_CONFIGS + VSPLIT_CONFIGS
# TMA-fed tiles (mla_decode_tma.py), candidates only where tma_unsupported_reason allows them. Session 14
# (H100, 128 heads, 64 x 4k / 64 x 32k / 128 x 8k): h64 n64 w8 s2 0.275 / 2.13 / 1.09 ms against h32 n64's
# 0.382 / 2.96 / 1.49 (45-48% of copy against 33%); n32 tiles and 16 warps were slower.
TMA_CONFIGS = [DecodeConfig(64, 64, None, None, 8, 2, kernel="tma")]
# The Gluon kernel (mla_decode_gluon.py; sm_90): 84-93% of copy at the same shapes (Session 14).
GLUON_CONFIGS = [DecodeConfig(64, 64, None, None, 4, 2, kernel="gluon")]
SMALL_CONFIG = DecodeConfig(16, 32, None, None, 4, 2)  # <= 16 heads: the one gather tile
INTERPRET_CONFIG = DecodeConfig(16, 16, None, None, 4, 1)

_tuned: dict = {}  # (batch bucket, heads, L, R, dtype, device, configs) -> the fastest DecodeConfig


def num_splits_for(batch: int, heads: int, L: int, cfg: DecodeConfig, sms: int) -> int:
    """Split the tokens only to fill the SMs once: floor(SMs / this config's programs per split).
    Each split adds a partial (BLOCK_H x L fp32 per program) for the reduce to read back; once the
    programs cover the SMs that costs more than it balances (H100, 64 x 4k, h64 tile: 1 split 442 us,
    2: 465, the earlier ~4 programs per SM, 5 splits: 527; 64 x 32k: 3415 / 3448 / 3495 us)."""
    block_l = launch_cache.next_power_of_2(L)
    programs = launch_cache.cdiv(heads, cfg.block_h) * (block_l // min(cfg.block_v or block_l, block_l))
    return max(1, min(64, sms // (batch * programs)))


def pick_config(key, configs, run: Callable[[DecodeConfig], None], timer: Callable) -> DecodeConfig:
    """The config with the lowest time(run(config)); configs that fail (too big for this GPU) are skipped."""
    if key not in _tuned:
        timed = []
        for cfg in configs:
            try:
                timed.append((timer(lambda cfg=cfg: run(cfg)), cfg))
            except Exception as exc:  # out of shared memory / registers on this GPU
                log.info("mla_decode config %s skipped: %s", cfg.name, exc)
        if not timed:
            raise RuntimeError(f"mla_decode: no config of {[c.name for c in configs]} runs here")
        _tuned[key] = min(timed, key=lambda t: t[0])[1]
        log.info("mla_decode %s: picked %s", key[:5], _tuned[key].name)
    return _tuned[key]


def unsupported_reason(cfg: DecodeConfig, q: torch.Tensor, latent_cache: torch.Tensor,
                       kv_lora_rank: int) -> str | None:
    """Why cfg's kernel cannot run this call (None: it can). The gather kernel runs everything."""
    if cfg.kernel == "tma":
        from .mla_decode_tma import tma_unsupported_reason

        return tma_unsupported_reason(q, latent_cache, kv_lora_rank, cfg.block_h, cfg.block_n)
    if cfg.kernel == "gluon":
        from .mla_decode_gluon import unsupported_reason as gluon_unsupported_reason

        if os.environ.get("ROCM_ATTN_GLUON_MLA", "1") == "0":
            return "turned off (ROCM_ATTN_GLUON_MLA=0)"
        return gluon_unsupported_reason(q, latent_cache, kv_lora_rank)
    return None


def gpu_time_ms(fn: Callable[[], None]) -> float:
    """Median GPU time of fn, replayed from a CUDA graph: what a graph-captured decode step pays. Timed call
    after call instead (do_bench), the TMA and Gluon kernels' longer Python launch (~245 us against ~190 us
    per call, Session 14) hid their shorter GPU time at small batches, and the launcher kept the gather kernel
    at 1.7 TB/s where the Gluon one runs 2.6-3.0 (32 heads). Falls back to do_bench where a graph cannot be
    captured."""
    torch.cuda.synchronize()  # do_bench_cudagraph warms up on a side stream: the inputs must be ready
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))
    except Exception:  # e.g. called while another graph is being captured
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median"))


def candidate_configs(q: torch.Tensor, latent_cache: torch.Tensor, kv_lora_rank: int) -> list[DecodeConfig]:
    """What the launcher times by default: DECODE_CONFIGS (SMALL_CONFIG alone at <= 16 heads), plus the TMA
    and Gluon configs that can run this call."""
    extra = [c for c in TMA_CONFIGS + GLUON_CONFIGS
             if unsupported_reason(c, q, latent_cache, kv_lora_rank) is None]
    return ([SMALL_CONFIG] if q.shape[1] <= 16 else DECODE_CONFIGS) + extra


def tuned_config(q: torch.Tensor, kv_lora_rank: int, configs=None, latent_cache=None) -> DecodeConfig | None:
    """The config picked for this q's (batch bucket, heads, L, R, dtype, device) among `configs` (default: the
    launcher's own candidates for this q and latent_cache, or DECODE_CONFIGS without a cache); None before the
    first call with such a q."""
    if configs is None:
        configs = DECODE_CONFIGS if latent_cache is None else candidate_configs(q, latent_cache, kv_lora_rank)
    return _tuned.get(_tune_key(q, kv_lora_rank, tuple(configs)))


def _tune_key(q: torch.Tensor, L: int, configs: tuple) -> tuple:
    # the batch, to the next power of two: which kernel wins depends on how many programs a call has (at 1 x 4k
    # the gather tile, at 64 x 4k the Gluon kernel, 2.5x faster there: H100, Session 15). Keyed without it,
    # the first call's pick served every later batch.
    return (launch_cache.next_power_of_2(q.shape[0]), q.shape[1], L, q.shape[2] - L, q.dtype, str(q.device),
            configs)


def _check_config(cfg: DecodeConfig, block_l: int) -> None:
    if cfg.kernel not in ("gather", "tma", "gluon"):
        raise ValueError(f"mla_decode_launch: kernel={cfg.kernel!r} is not one of gather, tma, gluon")
    if cfg.kernel != "gather" and (cfg.block_v or cfg.block_k):
        raise ValueError(f"mla_decode_launch: a {cfg.kernel} config has no value split or q chunks "
                         "(block_v / block_k)")
    if cfg.kernel == "gluon" and cfg not in GLUON_CONFIGS:
        raise ValueError(f"mla_decode_launch: the gluon kernel's tile is fixed: {GLUON_CONFIGS[0].name}")
    for name in ("block_h", "block_n", "block_v", "block_k"):
        v = getattr(cfg, name)
        if v is not None and (v < 16 or v & (v - 1)):
            raise ValueError(f"mla_decode_launch: {name}={v} must be a power of two >= 16 (tl.dot tiles)")
    for name in ("block_v", "block_k"):
        v = getattr(cfg, name)
        if v is not None and v > block_l:
            raise ValueError(f"mla_decode_launch: {name}={v} is wider than the padded L={block_l}")


def mla_decode_launch(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, num_splits=None,
                      config: DecodeConfig | None = None, configs=None, reduce_heads=1):
    """q [B,H,L+R], latent_cache [nb,bs,L+R] -> (out [B,H,L], lse [H,B] fp32).

    config: one fixed tile (benchmarks, tests); else the interpreter uses a fixed tile and the GPU picks
    the fastest of `configs` (default candidate_configs: DECODE_CONFIGS, or SMALL_CONFIG at <= 16 heads, and
    the TMA and Gluon configs where they can run) on the first call per (batch to the next power of two, heads,
    L, R, dtype, candidates).
    num_splits: override the split count. reduce_heads: heads per reduce program.
    """
    from .mla_decode_gluon import launch_gluon  # (both import this module's reduce_splits)
    from .mla_decode_tma import launch_tma

    q = q if q.stride(-1) == 1 else q.contiguous()
    B, H, width = q.shape
    L, R = kv_lora_rank, width - kv_lora_rank
    block_l = launch_cache.next_power_of_2(L)
    out = torch.empty(B, H, L, dtype=q.dtype, device=q.device)
    lse = torch.empty(H, B, dtype=torch.float32, device=q.device)
    seq_lens = seq_lens if seq_lens.dtype == torch.int32 else seq_lens.to(torch.int32)
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    if reduce_heads < 1 or reduce_heads & (reduce_heads - 1):
        raise ValueError(f"mla_decode_launch: reduce_heads={reduce_heads} must be a power of two")
    interp = triton_interpret()
    sms = 0 if interp else torch.cuda.get_device_properties(q.device).multi_processor_count

    def run(cfg: DecodeConfig, checked: bool = False) -> None:
        _check_config(cfg, block_l)
        splits = num_splits or (3 if interp else num_splits_for(B, H, L, cfg, sms))  # 3: exercise the reduce
        if cfg.kernel == "tma":
            launch_tma(q, latent_cache, seq_lens, block_table, scale, L, cfg, splits, out, lse, reduce_heads)
        elif cfg.kernel == "gluon":
            launch_gluon(q, latent_cache, seq_lens, block_table, scale, L, splits, out, lse, reduce_heads,
                         checked=checked)
        else:
            _launch(q, latent_cache, seq_lens, block_table, scale, L, R, cfg, splits, reduce_heads, out, lse)

    if config is None and interp:
        config = INTERPRET_CONFIG
    checked = False  # whether candidate_configs has already asked the kernel if it can run this call
    if config is None:
        checked = not configs
        configs = tuple(configs or candidate_configs(q, latent_cache, L))
        key = _tune_key(q, L, configs)
        if key not in _tuned and torch.cuda.is_current_stream_capturing():
            config = untimed_pick(configs)  # nothing can be timed (or synchronized) inside a graph capture
        else:
            config = pick_config(key, configs, run, gpu_time_ms)
    run(config, checked)
    return out, lse


def untimed_pick(configs) -> DecodeConfig:
    """The config for a batch met first inside a CUDA-graph capture (not remembered: the next call outside a
    capture times the candidates): the Gluon kernel where it can run, the TMA one next, else the first."""
    for kernel in ("gluon", "tma"):
        for cfg in configs:
            if cfg.kernel == kernel:
                return cfg
    return configs[0]


def _launch(q, latent_cache, seq_lens, block_table, scale, L, R, cfg, splits, reduce_heads, out, lse):
    B, H, _ = q.shape
    block_l = launch_cache.next_power_of_2(L)
    block_v = min(cfg.block_v or block_l, block_l)
    block_k = min(cfg.block_k or block_l, block_l)
    mid_o, mid_lse, mo_strides, ml_strides = split_partials(out, lse, splits)
    args = (q, latent_cache, seq_lens, block_table, mid_o, mid_lse, out, lse, q.stride(0), q.stride(1),
            latent_cache.stride(0), latent_cache.stride(1), block_table.stride(0), *mo_strides, *ml_strides,
            out.stride(0), out.stride(1), lse.stride(0), float(scale) * LOG2E, H)
    constexprs = dict(BLOCK_SIZE=latent_cache.shape[1], L=L, R=R, BLOCK_L=block_l,
                      BLOCK_R=max(launch_cache.next_power_of_2(R), 16), BLOCK_H=cfg.block_h,
                      BLOCK_N=cfg.block_n, BLOCK_V=block_v, BLOCK_K=block_k,
                      DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32")
    launch_cache.launch(_COMPILED_SPLIT, _mla_decode_split_kernel,
                        (launch_cache.cdiv(H, cfg.block_h) * (block_l // block_v), splits, B),
                        args, constexprs,
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if splits > 1:
        reduce_splits(mid_o, mid_lse, out, lse, splits, reduce_heads)


def split_partials(out, lse, splits):
    """Stage 1's partial buffers (mid_o [B, H, splits, L] fp32, mid_lse [B, H, splits]) and their strides;
    with one split there is nothing to merge: out / lse stand in (unused) and the strides are 0."""
    if splits == 1:
        return out, lse, (0, 0, 0), (0, 0)
    B, H, L = out.shape
    mid_o = torch.empty(B, H, splits, L, dtype=torch.float32, device=out.device)
    mid_lse = torch.empty(B, H, splits, dtype=torch.float32, device=out.device)
    mo_strides = (mid_o.stride(0), mid_o.stride(1), mid_o.stride(2))
    return mid_o, mid_lse, mo_strides, (mid_lse.stride(0), mid_lse.stride(1))


def reduce_splits(mid_o, mid_lse, out, lse, splits, reduce_heads=1) -> None:
    """Stage 2: merge each head's split partials (mid_o [B, H, splits, L] fp32, mid_lse [B, H, splits] log2)
    into out [B, H, L] and lse [H, B] (natural log)."""
    B, H, L = out.shape
    args = (mid_o, mid_lse, out, lse, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0),
            mid_lse.stride(1), out.stride(0), out.stride(1), lse.stride(0), splits, H)
    constexprs = dict(L=L, BLOCK_L=launch_cache.next_power_of_2(L), BLOCK_HR=reduce_heads)
    launch_cache.launch(_COMPILED_REDUCE, _mla_decode_reduce_kernel, (launch_cache.cdiv(H, reduce_heads), B),
                        args, constexprs, num_warps=4)


# specialization -> Triton CompiledKernel of the gather and reduce kernels (launch_cache.py: the JIT launch
# path was a third of an eager call's host time)
_COMPILED_SPLIT: dict[tuple, object] = {}
_COMPILED_REDUCE: dict[tuple, object] = {}
