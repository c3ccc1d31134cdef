"""Fusions that end in per-token FP8 quantization, for the post-grad passes to target.

    rms_norm_quant_fp8(x[..., K], weight[K], eps)            -> (xq [..., K], x_scale [..., 1])
    fused_add_rms_norm_quant_fp8(x, residual, weight, eps)   -> (xq, x_scale, residual_out)
    silu_mul_quant_fp8(gate_up[..., 2N])                     -> (xq [..., N], x_scale [..., 1])
    silu_mul_quant_fp8(gate[..., N], up[..., N])             -> the same, gate and up apart

The references follow Hugging Face exactly, roundings included, then per_token_quant_fp8:
- LlamaRMSNorm: h = x.float(); h = h * rsqrt(mean(h^2) + eps); y = weight * h.to(x.dtype)
  (so y has dtype promote(weight, x)).
- residual add (decoder layer): residual_out = x + residual, in x's dtype; normed after.
- LlamaMLP: silu(gate) * up, each op in gate_up's dtype.
The Triton kernels take one row per program and read it once (the same roundings, fp32 math).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import check_float, check_rank, check_same_device
from .custom_op import custom_op
from .per_token_quant import per_token_quant_fp8_torch
from .platform import fp8_dtype, fp8_max
from .registry import dispatch, register_provider

ROW_DOC = "[..., K] with at least 2 dims (tokens x features)"
# The Triton norm kernel keeps a whole row in registers: rows up to this many elements.
RMS_NORM_TRITON_MAX_K = 16384


def _norm_triton_supports(x=None, *args):
    if x is not None and x.shape[-1] > RMS_NORM_TRITON_MAX_K:
        return f"the Triton RMSNorm kernel takes rows of <= {RMS_NORM_TRITON_MAX_K} elements, got {x.shape[-1]}"
    return None


def _check_norm_inputs(op, x, weight, eps, residual=None):
    check_float("x", op, x)
    check_rank("x", op, x, tuple(range(2, 9)), ROW_DOC)
    check_float("weight", op, weight)
    if tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"rocm_attn.{op}: weight must be [K] = ({x.shape[-1]},), got {tuple(weight.shape)}")
    if residual is not None:
        check_float("residual", op, residual)
        if residual.shape != x.shape:
            raise ValueError(f"rocm_attn.{op}: residual has shape {tuple(residual.shape)}, "
                             f"x has {tuple(x.shape)}; they must match")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"rocm_attn.{op}: eps must be a float >= 0, got {eps!r}")
    check_same_device(op, x=x, weight=weight, residual=residual)


def _quant_out_fake(x, K):
    return (x.new_empty((*x.shape[:-1], K), dtype=fp8_dtype()),
            x.new_empty((*x.shape[:-1], 1), dtype=torch.float32))


def rms_norm_hf(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward, verbatim in math and roundings."""
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)


# ---- rms_norm_quant_fp8 ---------------------------------------------------------------------


def rms_norm_quant_fp8_torch(x, weight, eps):
    return per_token_quant_fp8_torch(rms_norm_hf(x, weight, eps))


register_provider("rms_norm_quant_fp8", "torch")(rms_norm_quant_fp8_torch)


@register_provider("rms_norm_quant_fp8", "triton", supports=_norm_triton_supports)
def rms_norm_quant_fp8_triton(x, weight, eps):
    from .triton_kernels.rms_norm_quant import rms_norm_quant_fp8_launch

    return rms_norm_quant_fp8_launch(x, None, weight, eps, fp8_dtype(), fp8_max())[:2]


@custom_op("rms_norm_quant_fp8", mutates_args=())
def rms_norm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (HF Llama) then per-token FP8 quant: -> (xq [..., K] fp8, x_scale [..., 1] fp32)."""
    _check_norm_inputs("rms_norm_quant_fp8", x, weight, eps)
    return dispatch("rms_norm_quant_fp8", x.device, x, weight, eps)


@rms_norm_quant_fp8.register_fake
def _(x, weight, eps):
    _check_norm_inputs("rms_norm_quant_fp8", x, weight, eps)
    return _quant_out_fake(x, x.shape[-1])


# ---- fused_add_rms_norm_quant_fp8 ----------------------------------------------------------


def fused_add_rms_norm_quant_fp8_torch(x, residual, weight, eps):
    residual_out = (x + residual).to(x.dtype).contiguous()  # contiguous, as the kernels give it
    xq, x_scale = per_token_quant_fp8_torch(rms_norm_hf(residual_out, weight, eps))
    return xq, x_scale, residual_out


register_provider("fused_add_rms_norm_quant_fp8", "torch")(fused_add_rms_norm_quant_fp8_torch)


@register_provider("fused_add_rms_norm_quant_fp8", "triton", supports=_norm_triton_supports)
def fused_add_rms_norm_quant_fp8_triton(x, residual, weight, eps):
    from .triton_kernels.rms_norm_quant import rms_norm_quant_fp8_launch

    return rms_norm_quant_fp8_launch(x, residual, weight, eps, fp8_dtype(), fp8_max())


@custom_op("fused_add_rms_norm_quant_fp8", mutates_args=())
def fused_add_rms_norm_quant_fp8(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """r = x + residual (x's dtype); -> (xq, x_scale) of RMSNorm(r), and r."""
    _check_norm_inputs("fused_add_rms_norm_quant_fp8", x, weight, eps, residual)
    return dispatch("fused_add_rms_norm_quant_fp8", x.device, x, residual, weight, eps)


@fused_add_rms_norm_quant_fp8.register_fake
def _(x, residual, weight, eps):
    _check_norm_inputs("fused_add_rms_norm_quant_fp8", x, weight, eps, residual)
    return (*_quant_out_fake(x, x.shape[-1]), x.new_empty(x.shape))


# ---- silu_mul_quant_fp8 ---------------------------------------------------------------------


def _check_silu_inputs(op, gate_up, up=None):
    check_float("gate_up", op, gate_up)
    if up is None:
        check_rank("gate_up", op, gate_up, tuple(range(2, 9)), "[..., 2N] with at least 2 dims")
        if gate_up.shape[-1] % 2:
            raise ValueError(f"rocm_attn.{op}: gate_up's last dim must be even ([..., 2N]: gate then up), "
                             f"got shape {tuple(gate_up.shape)}")
        return
    # two operands: gate_up is the gate
    check_rank("gate", op, gate_up, tuple(range(2, 9)), "[..., N] with at least 2 dims")
    check_float("up", op, up)
    check_same_device(op, gate=gate_up, up=up)
    if up.shape != gate_up.shape or up.dtype != gate_up.dtype:
        raise ValueError(f"rocm_attn.{op}: up must match gate's shape and dtype, got gate "
                         f"{tuple(gate_up.shape)} {gate_up.dtype} and up {tuple(up.shape)} {up.dtype}")


def silu_mul_quant_fp8_torch(gate_up, up=None):
    if up is None:
        n = gate_up.shape[-1] // 2
        gate_up, up = gate_up[..., :n], gate_up[..., n:]
    return per_token_quant_fp8_torch(F.silu(gate_up) * up)


register_provider("silu_mul_quant_fp8", "torch")(silu_mul_quant_fp8_torch)


@register_provider("silu_mul_quant_fp8", "triton")
def silu_mul_quant_fp8_triton(gate_up, up=None):
    from .triton_kernels.silu_mul_quant import silu_mul_quant_fp8_launch

    return silu_mul_quant_fp8_launch(gate_up, fp8_dtype(), fp8_max(), up=up)


@custom_op("silu_mul_quant_fp8", mutates_args=())
def silu_mul_quant_fp8(gate_up: torch.Tensor, up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up then per-token FP8 quant -> (xq [..., N], x_scale [..., 1]).

    One operand: gate_up [..., 2N] holds gate then up (a fused gate/up projection's output).
    Two operands: gate_up is the gate [..., N] and up the up projection [..., N]."""
    _check_silu_inputs("silu_mul_quant_fp8", gate_up, up)
    return dispatch("silu_mul_quant_fp8", gate_up.device, gate_up, up)


@silu_mul_quant_fp8.register_fake
def _(gate_up, up=None):
    _check_silu_inputs("silu_mul_quant_fp8", gate_up, up)
    return _quant_out_fake(gate_up, gate_up.shape[-1] if up is not None else gate_up.shape[-1] // 2)
