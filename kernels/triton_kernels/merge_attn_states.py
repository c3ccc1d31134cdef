"""Triton merge_attn_states: one program per (token, head) merges two partial attention outputs by
their log-sum-exps (natural log; +inf counts as -inf; both empty -> 0, lse -inf)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch_cache


@triton.jit
def _merge_attn_states_kernel(
    out_ptr, lse_ptr, p_out_ptr, p_lse_ptr, s_out_ptr, s_lse_ptr, num_tokens,
    stride_pt, stride_ph, stride_st, stride_sh, stride_ot, stride_oh,
    stride_pl, stride_sl,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    p_lse = tl.load(p_lse_ptr + head * stride_pl + tok)
    s_lse = tl.load(s_lse_ptr + head * stride_sl + tok)
    p_lse = tl.where(p_lse == float("inf"), float("-inf"), p_lse)
    s_lse = tl.where(s_lse == float("inf"), float("-inf"), s_lse)
    m = tl.maximum(p_lse, s_lse)
    m = tl.where(m == float("-inf"), 0.0, m)
    wp = tl.exp(p_lse - m)
    ws = tl.exp(s_lse - m)
    total = wp + ws
    d = tl.arange(0, BLOCK_D)
    mask = d < HEAD_DIM
    p = tl.load(p_out_ptr + tok * stride_pt + head * stride_ph + d, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_out_ptr + tok * stride_st + head * stride_sh + d, mask=mask, other=0.0).to(tl.float32)
    out = (p * wp + s * ws) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + tok * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + head * num_tokens + tok, m + tl.log(total))


def merge_attn_states_launch(prefix_out, prefix_lse, suffix_out, suffix_lse):
    num_tokens, num_heads, head_dim = prefix_out.shape
    if prefix_out.stride(2) != 1:
        prefix_out = prefix_out.contiguous()
    if suffix_out.stride(2) != 1:
        suffix_out = suffix_out.contiguous()
    if prefix_lse.stride(1) != 1:
        prefix_lse = prefix_lse.contiguous()
    if suffix_lse.stride(1) != 1:
        suffix_lse = suffix_lse.contiguous()
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=prefix_out.dtype, device=prefix_out.device)
    lse = torch.empty((num_heads, num_tokens), dtype=torch.float32, device=prefix_out.device)
    block_d = launch_cache.next_power_of_2(head_dim)
    _merge_attn_states_kernel[(num_tokens, num_heads)](
        out, lse, prefix_out, prefix_lse, suffix_out, suffix_lse, num_tokens,
        prefix_out.stride(0), prefix_out.stride(1), suffix_out.stride(0), suffix_out.stride(1),
        out.stride(0), out.stride(1), prefix_lse.stride(0), suffix_lse.stride(0),
        HEAD_DIM=head_dim, BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 2,
    )
    return out, lse
