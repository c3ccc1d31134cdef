"""per_token_quant_fp8: one fp32 scale per row (token), the row scaled into the fp8 range.

    scale[m] = max(rowmax|x[m, :]| * INV_FP8_MAX, SCALE_FLOOR)      (fp32 multiply)
    xq[m, k] = fp8(clamp(x[m, k] / scale[m], -fp8_max, fp8_max))   (IEEE fp32 division)

INV_FP8_MAX = fp32(1 / fp8_max) and SCALE_FLOOR = fp32(1 / (fp8_max * 512)) are constants
rounded to fp32 once, so the torch reference (CPU or GPU) and every Triton kernel compute the
same scale bit for bit: a multiply by an fp32 constant has one correctly rounded answer,
whereas `amax / fp8_max` is a true division in some places and a multiply by the reciprocal
in others (PyTorch CUDA divides by a Python scalar that way).

The floor keeps all-zero rows finite (scale = floor, xq = 0). A row holding NaN/Inf only
spoils its own output: the per-token scale isolates it from the other rows. With a NaN the row's
scale differs by provider (NaN from the torch reference; the Triton kernels' max skips NaN, so
there it comes from the row's other values and the NaN stays in xq), and its GEMM output is NaN
either way.
"""

from __future__ import annotations

import functools

import torch

from .common import check_float, check_rank
from .custom_op import custom_op
from .platform import fp8_dtype, fp8_max
from .registry import dispatch, register_provider


def to_fp32(value: float) -> float:
    """value rounded to the nearest fp32, as a Python float (exact in fp32 everywhere)."""
    return float(torch.tensor(value, dtype=torch.float32))


@functools.lru_cache(maxsize=None)  # asked at every kernel launch: a tensor round trip costs host time
def inv_fp8_max(fp8_max_value: float) -> float:
    """1 / fp8_max rounded to fp32: scale = amax * inv_fp8_max (see the module docstring)."""
    return to_fp32(1.0 / fp8_max_value)


@functools.lru_cache(maxsize=None)
def scale_floor(fp8_max_value: float) -> float:
    # The smallest scale we hand out: keeps 0/0 out of zero rows (vLLM uses the same idea).
    return to_fp32(1.0 / (fp8_max_value * 512.0))


def check_quant_input(op: str, x: torch.Tensor) -> None:
    check_float("x", op, x)
    check_rank("x", op, x, tuple(range(2, 9)), "[..., K] with at least 2 dims (tokens x features)")


def per_token_quant_fp8_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: fp32 math, the same formula as the kernels."""
    dtype = fp8_dtype()
    fmax = fp8_max(dtype)
    x32 = x.float()
    if x.shape[-1] == 0:  # amax of an empty row would raise
        scale = torch.full((*x.shape[:-1], 1), scale_floor(fmax), dtype=torch.float32, device=x.device)
    else:
        scale = (x32.abs().amax(dim=-1, keepdim=True) * inv_fp8_max(fmax)).clamp_min(scale_floor(fmax))
    # contiguous whatever x's strides, as the Triton kernels and the fake impl give it
    xq = (x32 / scale).clamp(-fmax, fmax).to(dtype).contiguous()
    return xq, scale


register_provider("per_token_quant_fp8", "torch")(per_token_quant_fp8_torch)


@register_provider("per_token_quant_fp8", "triton")
def per_token_quant_fp8_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels.per_token_quant import per_token_quant_fp8_launch

    return per_token_quant_fp8_launch(x, fp8_dtype(), fp8_max())


@register_provider("per_token_quant_fp8", "aiter")
def per_token_quant_fp8_aiter(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import aiter

    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    xq, scale = aiter.per_token_quant_hip(x2, quant_dtype=fp8_dtype())
    return xq.view(x.shape), scale.view(*x.shape[:-1], 1).float()


@custom_op("per_token_quant_fp8", mutates_args=())
def per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (fp32/fp16/bf16) -> (xq [..., K] fp8, scale [..., 1] fp32)."""
    check_quant_input("per_token_quant_fp8", x)
    return dispatch("per_token_quant_fp8", x.device, x)


@per_token_quant_fp8.register_fake
def _(x):
    check_quant_input("per_token_quant_fp8", x)
    return x.new_empty(x.shape, dtype=fp8_dtype()), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
