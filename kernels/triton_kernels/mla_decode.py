"""Triton MLA decode (absorbed form): split-KV over the paged latent cache, then a reduce.

Stage 1: one program = one sequence x one split of its tokens x BLOCK_H heads. All BLOCK_H heads
share each latent-row read (MQA: one latent row per token serves every head): scores =
q_nope_lat @ kv_c^T + q_pe @ k_pe^T, then acc += p @ kv_c. The head-group axis is the fastest grid
axis, so the programs that read the same rows run side by side and the rows come from L2 for all
but the first. With one split the program writes the final output directly; otherwise it writes
a partial (normalised fp32 output + log2-sum-exp) and stage 2 merges the splits of each head.

Shapes: L = kv_lora_rank (512), R = qk_rope_head_dim (64), both padded to powers of two.
On the GPU the tile (heads per program, tokens per step, warps, stages) is autotuned once per
(heads, L, R) over DECODE_CONFIGS; `benchmarks/bench_mla.py --tune` sweeps a wider grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret

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
    BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr,
    L: tl.constexpr, R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    head_group = tl.program_id(0)
    split = tl.program_id(1)
    b = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    # every split gets a whole number of BLOCK_N tiles
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_h = head_group * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, BLOCK_L)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    h_ok = offs_h < num_heads
    l_ok = offs_l < L
    r_ok = offs_r < R

    q_base = Q + b.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
    q_nope = tl.load(q_base + offs_l[None, :], mask=h_ok[:, None] & l_ok[None, :], other=0.0)
    q_pe = tl.load(q_base + L + offs_r[None, :], mask=h_ok[:, None] & r_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_L], dtype=tl.float32)
    bt_row = BLOCK_TABLE + b.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        n_ok = pos < end
        blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
        row = CACHE + blk * stride_cblk + (pos % BLOCK_SIZE) * stride_ctok  # [BLOCK_N] row pointers
        kv = tl.load(row[:, None] + offs_l[None, :], mask=n_ok[:, None] & l_ok[None, :], other=0.0)
        k_pe = tl.load(row[:, None] + L + offs_r[None, :], mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        s = tl.dot(q_nope, tl.trans(kv), input_precision=DOT_PREC)
        s = tl.dot(q_pe, tl.trans(k_pe), acc=s, input_precision=DOT_PREC)
        s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kv.dtype), kv, input_precision=DOT_PREC)
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
    if NUM_SPLITS == 1:
        o_ptr = OUT + b.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_l[None, :]
        tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=h_ok[:, None] & l_ok[None, :])
        tl.store(LSE + offs_h * stride_lse_h + b, lse2 * 0.6931471805599453, mask=h_ok)
    else:
        mo = (MID_O + b.to(tl.int64) * stride_mo_b + offs_h[:, None].to(tl.int64) * stride_mo_h
              + split * stride_mo_s + offs_l[None, :])
        tl.store(mo, out, mask=h_ok[:, None] & l_ok[None, :])
        tl.store(MID_LSE + b.to(tl.int64) * stride_ml_b + offs_h * stride_ml_h + split, lse2, mask=h_ok)


@triton.jit
def _mla_decode_reduce_kernel(
    MID_O, MID_LSE, OUT, LSE,
    stride_mo_b, stride_mo_h, stride_mo_s,
    stride_ml_b, stride_ml_h,
    stride_ob, stride_oh, stride_lse_h,
    NUM_SPLITS: tl.constexpr, L: tl.constexpr, BLOCK_L: tl.constexpr,
):
    h = tl.program_id(0)
    b = tl.program_id(1)
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    lse_row = MID_LSE + b.to(tl.int64) * stride_ml_b + h * stride_ml_h
    mo_row = MID_O + b.to(tl.int64) * stride_mo_b + h.to(tl.int64) * stride_mo_h
    m = tl.full([1], float("-inf"), dtype=tl.float32)
    for s in range(NUM_SPLITS):
        m = tl.maximum(m, tl.load(lse_row + s + tl.zeros([1], dtype=tl.int32)))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for s in range(NUM_SPLITS):
        w = tl.exp2(tl.load(lse_row + s + tl.zeros([1], dtype=tl.int32)) - m_safe)  # 0 for empty splits
        o = tl.load(mo_row + s * stride_mo_s + offs_l, mask=l_ok, other=0.0)
        o = tl.where(w > 0.0, o, 0.0)  # an empty split's partial is never read as a number
        acc += w * o
        total += w
    seen = total > 0.0
    t_safe = tl.where(seen, total, 1.0)
    tl.store(OUT + b.to(tl.int64) * stride_ob + h * stride_oh + offs_l, (acc / t_safe).to(OUT.dtype.element_ty),
             mask=l_ok)
    lse = tl.where(seen, (m_safe + tl.log2(t_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + h * stride_lse_h + b + tl.arange(0, 1), lse)


# (BLOCK_H, BLOCK_N, num_warps, num_stages) tried once per (heads, L, R) on the GPU. More heads per
# program = fewer re-reads of each latent tile from L2 (128 heads / 16 = 8 reads, / 64 = 2), at the price
# of a bigger fp32 accumulator (BLOCK_H x 512) in registers.
DECODE_CONFIGS = [(16, 32, 4, 2), (32, 32, 4, 2), (32, 32, 8, 2), (64, 32, 8, 2), (64, 16, 8, 3)]
_autotuned = None


def _autotuned_kernel():
    global _autotuned
    if _autotuned is None:
        configs = [triton.Config({"BLOCK_H": h, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for h, n, w, s in DECODE_CONFIGS]
        _autotuned = triton.autotune(configs, key=["num_heads", "L", "R"])(_mla_decode_split_kernel)
    return _autotuned


def _num_splits(batch: int, head_groups: int, device: torch.device) -> int:
    """Enough programs to fill the GPU ~4 times over; the kernel clips each split to its sequence."""
    if triton_interpret():
        return 3  # exercise the reduce on CPU
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(64, triton.cdiv(4 * sms, batch * head_groups)))


def mla_decode_launch(q, latent_cache, seq_lens, block_table, scale, kv_lora_rank, num_splits=None,
                      block_h=None, block_n=None, num_warps=None, num_stages=None):
    """q [B,H,L+R], latent_cache [nb,bs,L+R] -> (out [B,H,L], lse [H,B] fp32). Tuning knobs for benchmarks."""
    q = q if q.stride(-1) == 1 else q.contiguous()
    B, H, width = q.shape
    L, R = kv_lora_rank, width - kv_lora_rank
    bs = latent_cache.shape[1]
    out = torch.empty(B, H, L, dtype=q.dtype, device=q.device)
    lse = torch.empty(H, B, dtype=torch.float32, device=q.device)
    interp = triton_interpret()
    # explicit tiles (benchmark sweeps), the interpreter, or few heads: one fixed config; else autotuned
    fixed = interp or block_h is not None or H <= 16
    block_h = block_h or 16  # tl.dot needs M >= 16
    block_n = block_n or (16 if interp else 32)
    num_warps = num_warps or 4
    num_stages = num_stages or (1 if interp else 2)
    splits = num_splits or _num_splits(B, triton.cdiv(H, 16), q.device)
    if splits > 1:
        mid_o = torch.empty(B, H, splits, L, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    else:
        mid_o, mid_lse = out, lse  # unused
    seq_lens = seq_lens if seq_lens.dtype == torch.int32 else seq_lens.to(torch.int32)
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    mo_strides = (mid_o.stride(0), mid_o.stride(1), mid_o.stride(2)) if splits > 1 else (0, 0, 0)
    ml_strides = (mid_lse.stride(0), mid_lse.stride(1)) if splits > 1 else (0, 0)
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    args = (q, latent_cache, seq_lens, block_table, mid_o, mid_lse, out, lse,
            q.stride(0), q.stride(1),
            latent_cache.stride(0), latent_cache.stride(1),
            block_table.stride(0),
            *mo_strides, *ml_strides,
            out.stride(0), out.stride(1), lse.stride(0),
            float(scale) * LOG2E, H)
    flags = dict(BLOCK_SIZE=bs, NUM_SPLITS=splits, L=L, R=R, BLOCK_L=triton.next_power_of_2(L),
                 BLOCK_R=max(triton.next_power_of_2(R), 16), DOT_PREC=dot_prec)
    if fixed:
        _mla_decode_split_kernel[(triton.cdiv(H, block_h), splits, B)](
            *args, **flags, BLOCK_H=block_h, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
    else:
        _autotuned_kernel()[lambda meta: (triton.cdiv(H, meta["BLOCK_H"]), splits, B)](*args, **flags)
    if splits > 1:
        _mla_decode_reduce_kernel[(H, B)](
            mid_o, mid_lse, out, lse, *mo_strides, *ml_strides,
            out.stride(0), out.stride(1), lse.stride(0),
            NUM_SPLITS=splits, L=L, BLOCK_L=triton.next_power_of_2(L), num_warps=4,
        )
    return out, lse
