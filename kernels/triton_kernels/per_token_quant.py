"""Triton kernel for per_token_quant_fp8: one program per row.

Memory bound: read K inputs, write K fp8 bytes and one scale. Rows that fit in one block
are read once (kept in registers between the amax and the quant pass); longer rows loop
twice, the second read hitting L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_SINGLE_BLOCK = 16384


@triton.jit
def _per_token_quant_fp8_kernel(
    x_ptr, xq_ptr, scale_ptr,
    K, stride_xm,
    FP8_MAX: tl.constexpr, SCALE_FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = xq_ptr + row * K
    offs = tl.arange(0, BLOCK_K)
    if SINGLE_BLOCK:
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        # IEEE division (div_rn), as torch does: Triton's `/` is approximate (div.full.f32)
        scale = tl.maximum(tl.math.div_rn(amax, tl.zeros_like(amax) + FP8_MAX), SCALE_FLOOR)
        q = tl.clamp(tl.math.div_rn(x, tl.zeros_like(x) + scale), -FP8_MAX, FP8_MAX)
        tl.store(q_row + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(acc, tl.abs(x))
        amax = tl.max(acc, axis=0)
        scale = tl.maximum(tl.math.div_rn(amax, tl.zeros_like(amax) + FP8_MAX), SCALE_FLOOR)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, tl.zeros_like(x) + scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + k0 + offs, q.to(xq_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


def per_token_quant_fp8_launch(x: torch.Tensor, out_dtype: torch.dtype, fp8_max: float):
    shape = x.shape
    K = shape[-1]
    x2 = x.reshape(-1, K)
    if K > 0 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    xq = torch.empty((M, K), dtype=out_dtype, device=x.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if M == 0:
        return xq.view(shape), scale.view(*shape[:-1], 1)
    if K == 0:
        scale.fill_(1.0 / (fp8_max * 512.0))
        return xq.view(shape), scale.view(*shape[:-1], 1)
    single = K <= MAX_SINGLE_BLOCK
    block = triton.next_power_of_2(K) if single else 4096
    num_warps = 1 if block <= 512 else 4 if block <= 4096 else 8
    _per_token_quant_fp8_kernel[(M,)](
        x2, xq, scale, K, x2.stride(0),
        FP8_MAX=fp8_max, SCALE_FLOOR=1.0 / (fp8_max * 512.0),
        BLOCK_K=block, SINGLE_BLOCK=single, num_warps=num_warps,
    )
    return xq.view(shape), scale.view(*shape[:-1], 1)
