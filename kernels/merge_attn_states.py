"""merge_attn_states: combine attention over two disjoint key sets by their log-sum-exps.

    m   = max(p_lse, s_lse)                       (per head and token; natural log)
    out = (e^(p_lse-m) * prefix_out + e^(s_lse-m) * suffix_out) / (e^(p_lse-m) + e^(s_lse-m))
    lse = m + log(e^(p_lse-m) + e^(s_lse-m))

prefix_out / suffix_out [T, H, D], prefix_lse / suffix_lse [H, T] (fp32). An lse of +inf means
an empty chunk (some kernels write +inf there) and counts as -inf; both empty -> out 0, lse -inf.
"""

from __future__ import annotations

import torch

from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .registry import dispatch, register_provider


def check_merge_inputs(prefix_out, prefix_lse, suffix_out, suffix_lse) -> None:
    op = "merge_attn_states"
    check_float("prefix_out", op, prefix_out)
    check_float("suffix_out", op, suffix_out)
    check_float("prefix_lse", op, prefix_lse, (torch.float32,))
    check_float("suffix_lse", op, suffix_lse, (torch.float32,))
    check_rank("prefix_out", op, prefix_out, 3, "[T, H, D]")
    if suffix_out.shape != prefix_out.shape or suffix_out.dtype != prefix_out.dtype:
        raise ValueError(f"rocm_attn.{op}: suffix_out {tuple(suffix_out.shape)} {suffix_out.dtype} must match "
                         f"prefix_out {tuple(prefix_out.shape)} {prefix_out.dtype}")
    t, h, _ = prefix_out.shape
    for name, lse in (("prefix_lse", prefix_lse), ("suffix_lse", suffix_lse)):
        if tuple(lse.shape) != (h, t):
            raise ValueError(f"rocm_attn.{op}: {name} must be [H, T] = [{h}, {t}], got {tuple(lse.shape)}")
    check_same_device(op, prefix_out=prefix_out, prefix_lse=prefix_lse, suffix_out=suffix_out,
                      suffix_lse=suffix_lse)


@register_provider("merge_attn_states", "torch")
def merge_attn_states_torch(prefix_out, prefix_lse, suffix_out, suffix_lse):
    inf = float("inf")
    p = prefix_lse.float().masked_fill(prefix_lse == inf, -inf).t().unsqueeze(-1)  # [T, H, 1]
    s = suffix_lse.float().masked_fill(suffix_lse == inf, -inf).t().unsqueeze(-1)
    m = torch.maximum(p, s)
    m_safe = torch.where(m == -inf, torch.zeros_like(m), m)
    wp, ws = torch.exp(p - m_safe), torch.exp(s - m_safe)
    denom = wp + ws
    out = (wp * prefix_out.float() + ws * suffix_out.float()) / torch.where(denom == 0, 1.0, denom)
    lse = (m_safe + torch.log(denom)).squeeze(-1).t().contiguous()
    return out.to(prefix_out.dtype).contiguous(), lse


@register_provider("merge_attn_states", "triton")
def merge_attn_states_triton(prefix_out, prefix_lse, suffix_out, suffix_lse):
    from .triton_kernels.merge_attn_states import merge_attn_states_launch

    return merge_attn_states_launch(prefix_out, prefix_lse, suffix_out, suffix_lse)


@custom_op("merge_attn_states", mutates_args=())
def merge_attn_states(prefix_out: torch.Tensor, prefix_lse: torch.Tensor, suffix_out: torch.Tensor,
                      suffix_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix_out, prefix_lse [H,T]) + (suffix_out, suffix_lse) -> (out [T,H,D], lse [H,T] fp32)."""
    check_merge_inputs(prefix_out, prefix_lse, suffix_out, suffix_lse)
    if prefix_out.numel() == 0:
        return prefix_out.new_empty(prefix_out.shape), prefix_lse.new_empty(prefix_lse.shape)
    return dispatch("merge_attn_states", prefix_out.device, prefix_out, prefix_lse, suffix_out, suffix_lse)


@merge_attn_states.register_fake
def _(prefix_out, prefix_lse, suffix_out, suffix_lse):
    check_merge_inputs(prefix_out, prefix_lse, suffix_out, suffix_lse)
    return prefix_out.new_empty(prefix_out.shape), prefix_lse.new_empty(prefix_lse.shape)
