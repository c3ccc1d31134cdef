"""Triton flash-attention forward: one kernel, two launchers (varlen and dense batched).

One program = one block of BLOCK_M queries of one query head of one sequence. It walks the
visible key blocks with an online softmax (fp32 running max / sum / accumulator, exp2 with
log2(e) folded into the scale). The key range is split in three: blocks that need masking
at the sliding-window edge, blocks that need none (the hot loop), and blocks at the causal
diagonal / sequence end; blocks no query of the program can see are never visited. A user
mask (dense launcher) is loaded per tile through its broadcast strides; a key-validity vector
(dense launcher, HAS_KEY_VALID: HF key padding) as one [BLOCK_N] slice per key block.

A head dim D that is not a power of two is split in two power-of-two parts (BLOCK_D + BLOCK_D2, e.g. MLA
prefill's 192 = 128 + 64) whose QK products accumulate into one score tile: padding 192 to 256 would waste a
quarter of the QK MMA work and of the Q/K shared memory. The value dim is padded to a power of two.

Hopper prefill config: BLOCK_M 128, BLOCK_N 64/128, 8 warps, 2-4 stages (autotuned over a
few; D 129..256 with Dv <= 128 over D192_CONFIGS); short query blocks (decode against a cache) use BLOCK_M 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..platform import triton_interpret
from . import launch_cache

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _tanh(x):
    # tanh through exp2 (portable: no libdevice); saturates cleanly to +-1.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def _load_k_part(ptrs, n, offs_d, seqlen_k, HEAD_D: tl.constexpr, MASKED: tl.constexpr, PAD: tl.constexpr):
    """K transposed, [head-dim part, BLOCK_N]: keys past seqlen_k (MASKED) and padded columns (PAD) read 0."""
    if MASKED:
        mask = n[None, :] < seqlen_k
        if PAD:
            mask = mask & (offs_d[:, None] < HEAD_D)
        return tl.load(ptrs, mask=mask, other=0.0)
    elif PAD:
        return tl.load(ptrs, mask=offs_d[:, None] < HEAD_D, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _attend_block(
    acc, l_i, m_i, q, q2, k_ptrs, k2_ptrs, v_ptrs, mask_ptrs, key_valid_ptr, start_n,
    offs_m, offs_n, q_pos, seqlen_q, seqlen_k,
    stride_ks, stride_vs, stride_mn,
    qk_scale, softcap_scale, softcap_out, window,
    offs_d, offs_d2, offs_dv, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D2: tl.constexpr,
    PAD_D: tl.constexpr, PAD_D2: tl.constexpr, PAD_DV: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr, HAS_KEY_VALID: tl.constexpr, DOT_PREC: tl.constexpr,
):
    n = start_n + offs_n
    # K is read transposed: [HEAD_D, BLOCK_N]
    kp = k_ptrs + start_n * stride_ks
    vp = v_ptrs + start_n * stride_vs
    k = _load_k_part(kp, n, offs_d, seqlen_k, HEAD_D, MASKED, PAD_D)
    qk = tl.dot(q, k, input_precision=DOT_PREC)
    if BLOCK_D2 > 0:
        # second part of a split head dim (columns [BLOCK_D, HEAD_D)), accumulated into the same scores
        k2 = _load_k_part(k2_ptrs + start_n * stride_ks, n, offs_d2, seqlen_k, HEAD_D, MASKED, PAD_D2)
        qk = tl.dot(q2, k2, qk, input_precision=DOT_PREC)
    if not (MASKED or SOFTCAP or HAS_MASK or HAS_KEY_VALID):
        # hot path: scale folded into one FMA with the max subtraction; every row sees a finite
        # score here, so m_new is finite and needs no -inf guard
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
    else:
        if SOFTCAP:
            qk = _tanh(qk * softcap_scale) * softcap_out  # c * tanh(s * scale / c), in log2 units
        else:
            qk = qk * qk_scale
        if MASKED:
            visible = n[None, :] < seqlen_k
            if CAUSAL:
                visible = visible & (n[None, :] <= q_pos[:, None])
            if WINDOW:
                visible = visible & (q_pos[:, None] - n[None, :] < window)
            qk = tl.where(visible, qk, float("-inf"))
        if HAS_MASK:
            mp = mask_ptrs + start_n * stride_mn
            m_ok = (offs_m[:, None] < seqlen_q) & (n[None, :] < seqlen_k)
            if BOOL_MASK:
                keep = tl.load(mp, mask=m_ok, other=0)
                qk = tl.where(keep != 0, qk, float("-inf"))
            else:
                bias = tl.load(mp, mask=m_ok, other=0.0).to(tl.float32)
                # clamp finite "minus infinity" (finfo.min) so that * log2(e) stays finite; -inf stays -inf
                bias2 = tl.maximum(bias, -2.0e38) * 1.4426950408889634
                qk = qk + tl.where(bias == float("-inf"), float("-inf"), bias2)
        if HAS_KEY_VALID:
            key_ok = tl.load(key_valid_ptr + n, mask=n < seqlen_k, other=0)
            qk = tl.where(key_ok[None, :] != 0, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v_mask = n[:, None] < seqlen_k
        if PAD_DV:
            v_mask = v_mask & (offs_dv[None, :] < HEAD_DV)
        v = tl.load(vp, mask=v_mask, other=0.0)
    elif PAD_DV:
        v = tl.load(vp, mask=offs_dv[None, :] < HEAD_DV, other=0.0)
    else:
        v = tl.load(vp)
    # rescale, then accumulate in the MMA itself (no separate add of a fresh [M, Dv] tile)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _flash_attn_fwd_kernel(
    Q, K, V, O, LSE, MASK, KEY_VALID, CU_Q, CU_K, QPOS,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_lse_h,
    stride_mb, stride_mh, stride_mm, stride_mn, stride_kvalid_b,
    seq_q, seq_k,
    qk_scale, softcap_scale, softcap_out, window,
    GROUP: tl.constexpr,
    HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_QPOS: tl.constexpr, STORE_LSE: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr, HAS_KEY_VALID: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # heavy (late, for causal) query blocks first: better tail balance
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    b = tl.program_id(2)
    kv_head = head // GROUP
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        seqlen_q = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        seqlen_k = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = 0
        seqlen_q = seq_q
        k_start = 0
        seqlen_k = seq_k
    m0 = start_m * BLOCK_M
    if m0 >= seqlen_q:
        return
    if HAS_QPOS:
        q_pos0 = tl.load(QPOS + b)
    else:
        q_pos0 = seqlen_k - seqlen_q

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    # BLOCK_D2 > 0: head dim split as [0, BLOCK_D) + [BLOCK_D, HEAD_D); only the second part can be padded
    PAD_D: tl.constexpr = BLOCK_D > HEAD_D
    PAD_D2: tl.constexpr = BLOCK_D + BLOCK_D2 > HEAD_D
    PAD_DV: tl.constexpr = BLOCK_DV != HEAD_DV
    q_pos = q_pos0 + offs_m

    b64 = b.to(tl.int64)
    q_base = Q + b64 * stride_qb + head.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qs
    k_base = K + b64 * stride_kb + kv_head.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_ks
    v_base = V + b64 * stride_vb + kv_head.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vs
    q_mask = offs_m[:, None] < seqlen_q
    if PAD_D:
        q_mask = q_mask & (offs_d[None, :] < HEAD_D)
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)
    k_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d[:, None]
    if BLOCK_D2 > 0:
        offs_d2 = BLOCK_D + tl.arange(0, BLOCK_D2)
        q2_mask = offs_m[:, None] < seqlen_q
        if PAD_D2:
            q2_mask = q2_mask & (offs_d2[None, :] < HEAD_D)
        q2 = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d2[None, :], mask=q2_mask, other=0.0)
        k2_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d2[:, None]
    else:  # no second part: placeholders, never read
        offs_d2 = offs_d
        q2 = q
        k2_ptrs = k_ptrs
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_dv[None, :]
    if HAS_MASK:
        mask_ptrs = (MASK + b64 * stride_mb + head.to(tl.int64) * stride_mh
                     + offs_m[:, None].to(tl.int64) * stride_mm + offs_n[None, :] * stride_mn)
    else:
        mask_ptrs = MASK
    if HAS_KEY_VALID:
        key_valid_ptr = KEY_VALID + b64 * stride_kvalid_b
    else:
        key_valid_ptr = KEY_VALID

    # visible key range [lo, hi) and its mask-free middle [full_lo, full_hi)
    pos_first = q_pos0 + m0
    pos_last = q_pos0 + tl.minimum(m0 + BLOCK_M, seqlen_q) - 1
    hi = seqlen_k
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, pos_last + 1), 0)
    lo = 0
    full_lo = 0
    if WINDOW:
        lo = tl.maximum(pos_first - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(pos_last - window + 1, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    full_hi = seqlen_k // BLOCK_N * BLOCK_N
    if CAUSAL:
        full_hi = tl.minimum(full_hi, tl.maximum(pos_first + 1, 0) // BLOCK_N * BLOCK_N)
    lo = tl.minimum(lo, hi)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi // BLOCK_N * BLOCK_N), full_lo)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, full_lo, BLOCK_N):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, q2, k_ptrs, k2_ptrs, v_ptrs, mask_ptrs, key_valid_ptr, start_n, offs_m, offs_n,
            q_pos, seqlen_q, seqlen_k,
            stride_ks, stride_vs, stride_mn, qk_scale, softcap_scale, softcap_out, window,
            offs_d, offs_d2, offs_dv, HEAD_D, HEAD_DV, BLOCK_D2, PAD_D, PAD_D2, PAD_DV,
            True, CAUSAL, WINDOW, SOFTCAP, HAS_MASK, BOOL_MASK, HAS_KEY_VALID, DOT_PREC)
    for start_n in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, q2, k_ptrs, k2_ptrs, v_ptrs, mask_ptrs, key_valid_ptr, start_n, offs_m, offs_n,
            q_pos, seqlen_q, seqlen_k,
            stride_ks, stride_vs, stride_mn, qk_scale, softcap_scale, softcap_out, window,
            offs_d, offs_d2, offs_dv, HEAD_D, HEAD_DV, BLOCK_D2, PAD_D, PAD_D2, PAD_DV,
            False, CAUSAL, WINDOW, SOFTCAP, HAS_MASK, BOOL_MASK, HAS_KEY_VALID, DOT_PREC)
    for start_n in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, q2, k_ptrs, k2_ptrs, v_ptrs, mask_ptrs, key_valid_ptr, start_n, offs_m, offs_n,
            q_pos, seqlen_q, seqlen_k,
            stride_ks, stride_vs, stride_mn, qk_scale, softcap_scale, softcap_out, window,
            offs_d, offs_d2, offs_dv, HEAD_D, HEAD_DV, BLOCK_D2, PAD_D, PAD_D2, PAD_DV,
            True, CAUSAL, WINDOW, SOFTCAP, HAS_MASK, BOOL_MASK, HAS_KEY_VALID, DOT_PREC)

    # rows that saw no key: l = 0 -> out 0, lse -inf
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_base = O + b64 * stride_ob + head.to(tl.int64) * stride_oh + q_start.to(tl.int64) * stride_os
    o_mask = offs_m[:, None] < seqlen_q
    if PAD_DV:
        o_mask = o_mask & (offs_dv[None, :] < HEAD_DV)
    tl.store(o_base + offs_m[:, None] * stride_os + offs_dv[None, :], out.to(O.dtype.element_ty), mask=o_mask)
    if STORE_LSE:
        lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + head.to(tl.int64) * stride_lse_h + q_start + offs_m, lse, mask=offs_m < seqlen_q)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried once per key on the GPU for long query blocks
PREFILL_CONFIGS = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4), (64, 64, 4, 3)]
# head dims 129..256 (MLA prefill: D 192, Dv 128): Q 128x192 bf16 is 48 KB, each stage of K 64x192 + V 64x128
# another 40 KB, so fewer stages / narrower key blocks
D192_CONFIGS = [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3)]
_autotuned = {}


def _prefill_kernel(configs):
    key = tuple(configs)
    if key not in _autotuned:
        _autotuned[key] = triton.autotune(
            [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
             for bm, bn, w, s in configs],
            key=["HEAD_D", "HEAD_DV", "IS_VARLEN", "CAUSAL", "WINDOW", "SOFTCAP", "HAS_MASK", "HAS_KEY_VALID",
                 "DOT_PREC"],
        )(_flash_attn_fwd_kernel)
    return _autotuned[key]


def _head_dim_blocks(D):
    """(BLOCK_D, BLOCK_D2). A power-of-two D (or D <= 16) is one block; any other D is split into the largest
    power of two below it plus a power-of-two rest (192 = 128 + 64, 80 = 64 + 16, 112 = 64 + 64 masked to 48),
    instead of padding it to the next power of two (192 -> 256: a quarter of the QK work and Q/K smem)."""
    p = launch_cache.next_power_of_2(D)
    if D <= 16 or p == D:
        return max(p, 16), 0
    return p // 2, max(launch_cache.next_power_of_2(D - p // 2), 16)


def _launch(q, k, v, out, lse, mask, cu_q, cu_k, qpos, strides, seq_q, seq_k, max_seqlen_q, batch, scale,
            causal, sliding_window, softcap, is_varlen, config=None, key_valid=None):
    hq, hkv = strides["hq"], strides["hkv"]
    D, Dv = q.shape[-1], v.shape[-1]
    if softcap > 0:
        qk_scale, softcap_scale, softcap_out = 0.0, scale / softcap, softcap * LOG2E
    else:
        qk_scale, softcap_scale, softcap_out = scale * LOG2E, 0.0, 0.0
    bool_mask = mask is not None and mask.dtype == torch.uint8
    args = [
        q, k, v, out, lse if lse is not None else out, mask if mask is not None else q,
        key_valid if key_valid is not None else q,
        cu_q if cu_q is not None else q, cu_k if cu_k is not None else q, qpos if qpos is not None else q,
        *strides["q"], *strides["k"], *strides["v"], *strides["o"], strides["lse"], *strides["mask"],
        key_valid.stride(0) if key_valid is not None else 0,
        seq_q, seq_k,
    ]
    block_d, block_d2 = _head_dim_blocks(D)
    flags = dict(
        GROUP=hq // hkv, HEAD_D=D, HEAD_DV=Dv,
        BLOCK_D=block_d, BLOCK_D2=block_d2, BLOCK_DV=max(launch_cache.next_power_of_2(Dv), 16),
        IS_VARLEN=is_varlen, HAS_QPOS=qpos is not None, STORE_LSE=lse is not None,
        CAUSAL=bool(causal), WINDOW=sliding_window > 0, SOFTCAP=softcap > 0,
        HAS_MASK=mask is not None, BOOL_MASK=bool_mask, HAS_KEY_VALID=key_valid is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )
    scalars = (float(qk_scale), float(softcap_scale), float(softcap_out), int(sliding_window))

    def run(kernel, block_m, **launch):
        kernel[(launch_cache.cdiv(max_seqlen_q, block_m), hq, batch)](*args, *scalars, **flags, **launch)

    if max_seqlen_q == 0 or batch == 0:
        return
    if triton_interpret():
        run(_flash_attn_fwd_kernel, 16, BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
        return
    if config is not None:  # (BLOCK_M, BLOCK_N, warps, stages) forced by the caller (benchmarks/tune_prefill.py)
        bm, bn, warps, stages = config
        run(_flash_attn_fwd_kernel, bm, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        return
    config = _fixed_config(max_seqlen_q, D, Dv, q.dtype)
    configs = D192_CONFIGS if D > 128 else PREFILL_CONFIGS
    plain = not (flags["WINDOW"] or flags["SOFTCAP"] or flags["HAS_MASK"] or flags["HAS_KEY_VALID"])
    if config is None and plain:
        # the hot path (plain causal / non-causal prefill): autotuned once per key
        _prefill_kernel(configs)[lambda meta: (launch_cache.cdiv(max_seqlen_q, meta["BLOCK_M"]), hq, batch)](
            *args, *scalars, **flags)
        return
    bm, bn, warps, stages = config or configs[0]
    run(_flash_attn_fwd_kernel, bm, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _fixed_config(max_seqlen_q, D, Dv, dtype):
    """(BLOCK_M, BLOCK_N, warps, stages) for the cases the autotuned lists do not cover, else None.
    fp32 and head dims > 128 take smaller tiles to fit shared memory, except 16-bit D <= 256 with Dv <= 128
    (MLA prefill, D 192 split as 128 + 64), which is autotuned over D192_CONFIGS."""
    fp32 = dtype == torch.float32
    if max_seqlen_q <= 16:  # decode-like (HF decode, Sq = 1): short query blocks
        return (16, 32 if fp32 or max(D, Dv) > 128 else 64, 4, 2)
    if fp32 or D > 256 or Dv > 128:
        return (64, 32, 4, 2)
    if max_seqlen_q <= 64:
        return (64, 64, 4, 3)
    return None


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def flash_attn_varlen_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
                             sliding_window=0, softcap=0.0, q_pos_offsets=None, config=None):
    """``config``: (BLOCK_M, BLOCK_N, num_warps, num_stages) instead of the autotuned choice (benchmarks)."""
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    tq, hq, _ = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    out = torch.empty(tq, hq, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(hq, tq, dtype=torch.float32, device=q.device)
    strides = dict(
        hq=hq, hkv=hkv,
        q=(0, q.stride(1), q.stride(0)), k=(0, k.stride(1), k.stride(0)), v=(0, v.stride(1), v.stride(0)),
        o=(0, out.stride(1), out.stride(0)), lse=lse.stride(0), mask=(0, 0, 0, 0),
    )
    _launch(q, k, v, out, lse, None, cu_seqlens_q, cu_seqlens_k, q_pos_offsets, strides, 0, 0, int(max_seqlen_q),
            cu_seqlens_q.numel() - 1, scale, causal, sliding_window, softcap, True, config)
    return out, lse


def flash_attention_dense_launch(q, k, v, attn_mask, scale, causal, sliding_window=0, softcap=0.0,
                                 key_valid=None):
    from ..flash_attention import dense_out_buffer, expand_mask

    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    B, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    out = dense_out_buffer(q, v)  # [B,Hq,Sq,Dv] view of [B,Sq,Hq,Dv]
    mask = None
    mask_strides = (0, 0, 0, 0)
    if attn_mask is not None:
        mask = expand_mask(attn_mask, B, hq, sq, sk)
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
        mask_strides = tuple(mask.stride())
    if key_valid is not None:  # [B, Sk] bool -> uint8, keys contiguous (the kernel reads key_valid[b, n])
        key_valid = key_valid.contiguous().view(torch.uint8)
    strides = dict(
        hq=hq, hkv=hkv,
        q=(q.stride(0), q.stride(1), q.stride(2)), k=(k.stride(0), k.stride(1), k.stride(2)),
        v=(v.stride(0), v.stride(1), v.stride(2)), o=(out.stride(0), out.stride(1), out.stride(2)),
        lse=0, mask=mask_strides,
    )
    _launch(q, k, v, out, None, mask, None, None, None, strides, sq, sk, sq, B, scale, causal, sliding_window,
            softcap, False, key_valid=key_valid)
    return out
