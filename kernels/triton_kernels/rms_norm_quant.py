"""Triton kernel for rms_norm_quant_fp8 and fused_add_rms_norm_quant_fp8: one row per program.

The row is read once and kept in registers: (residual add,) RMSNorm with HF Llama's
roundings, amax, quantize. Rows up to MAX_K elements (hidden sizes of real models);
longer rows go to the torch provider.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..per_token_quant import inv_fp8_max, scale_floor
from . import launch_cache
from .per_token_quant import quantize_by_row_scale

MAX_K = 16384


@triton.jit
def _rms_norm_quant_kernel(
    x_ptr, res_ptr, res_out_ptr, w_ptr, xq_ptr, scale_ptr,
    K, stride_x, stride_r, eps,
    FP8_MAX: tl.constexpr, INV_FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, ROUND_Y_TO_X: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # rounded like torch
        tl.store(res_out_ptr + row * K + offs, x, mask=mask)
    h = x.to(tl.float32)
    ssq = tl.sum(h * h, axis=0)
    variance = tl.math.div_rn(ssq, tl.zeros_like(ssq) + K)
    h = h * tl.rsqrt(variance + eps)
    h = h.to(x_ptr.dtype.element_ty).to(tl.float32)  # HF: hidden_states.to(input_dtype)
    y = h * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ROUND_Y_TO_X:  # weight * h has x's dtype unless the weight promotes it to fp32
        y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    # per_token_quant_fp8's definition: scale by an fp32 multiply, q by IEEE division
    scale = tl.maximum(tl.max(tl.abs(y), axis=0) * INV_FP8_MAX, SCALE_FLOOR)
    q = quantize_by_row_scale(y, scale, FP8_MAX)
    tl.store(xq_ptr + row * K + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


def rms_norm_quant_fp8_launch(x, residual, weight, eps, out_dtype, fp8_max):
    """-> (xq [..., K], scale [..., 1], residual_out [..., K] or None)."""
    shape = x.shape
    K = shape[-1]
    M = math.prod(shape[:-1])
    x2 = x.reshape(M, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    r2 = None
    if residual is not None:
        r2 = residual.reshape(M, K)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
    xq = torch.empty((M, K), dtype=out_dtype, device=x.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    res_out = torch.empty((M, K), dtype=x.dtype, device=x.device) if residual is not None else None
    if M > 0 and K == 0:
        scale.fill_(scale_floor(fp8_max))
    elif M > 0:
        if K > MAX_K:
            raise ValueError(f"the Triton rms_norm_quant kernel takes rows of <= {MAX_K} elements, got {K}")
        block = launch_cache.next_power_of_2(K)
        # above 8192 the row takes 16 warps: 8 left 64 fp32 values per thread (low occupancy)
        num_warps = 1 if block <= 512 else 4 if block <= 4096 else 8 if block <= 8192 else 16
        round_y = torch.promote_types(weight.dtype, x.dtype) == x.dtype
        _rms_norm_quant_kernel[(M,)](
            x2, r2 if r2 is not None else x2, res_out if res_out is not None else x2,
            weight.contiguous(), xq, scale,
            K, x2.stride(0), r2.stride(0) if r2 is not None else 0, float(eps),
            FP8_MAX=fp8_max, INV_FP8_MAX=inv_fp8_max(fp8_max), SCALE_FLOOR=scale_floor(fp8_max),
            HAS_RESIDUAL=residual is not None, ROUND_Y_TO_X=round_y, BLOCK_K=block, num_warps=num_warps,
        )
    xq, scale = xq.view(shape), scale.view(*shape[:-1], 1)
    return xq, scale, (res_out.view(shape) if res_out is not None else None)
