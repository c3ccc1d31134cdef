"""Weight quantization, done once at load or compile time (never per call).

    quantize_weight_per_channel(w[N, K]) -> (wq fp8 [N, K], w_scale fp32 [N, 1])
    quantize_weight_per_tensor(w[N, K])  -> (wq fp8 [N, K], w_scale fp32 [1])

Per channel is per_token_quant_fp8's math with the rows read as output channels: one
scale per row of the [N, K] weight, which is what ptpc_scaled_mm's epilogue multiplies in.
Per tensor (one scale for the whole weight) is the classic FP8 recipe, kept for
side-by-side accuracy comparisons.
"""

from __future__ import annotations

import torch

from .common import check_float, check_rank
from .per_token_quant import inv_fp8_max, per_token_quant_fp8_torch, scale_floor
from .platform import fp8_dtype, fp8_max


def _reserve_gemm_state(device: torch.device) -> None:
    """A weight is quantized once, outside any CUDA graph: the moment to allocate the small-M GEMM's
    persistent split-K counters on its device (see ptpc_gemm_small_m.reserve_counters)."""
    if device.type == "cuda":
        from .triton_kernels.ptpc_gemm_small_m import reserve_counters

        reserve_counters(device)


def _check_weight(op: str, w: torch.Tensor) -> None:
    check_float("w", op, w)
    check_rank("w", op, w, 2, "[N, K] (out_features x in_features, as nn.Linear.weight)")


@torch.no_grad()
def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (wq fp8 [N, K], w_scale fp32 [N, 1]); scale[n] = rowmax|w[n]| * fp32(1/fp8_max)."""
    _check_weight("quantize_weight_per_channel", w)
    _reserve_gemm_state(w.device)
    wq, w_scale = per_token_quant_fp8_torch(w.detach())
    return wq.contiguous(), w_scale.contiguous()


@torch.no_grad()
def quantize_weight_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (wq fp8 [N, K], w_scale fp32 [1]); scale = max|w| * fp32(1/fp8_max)."""
    _check_weight("quantize_weight_per_tensor", w)
    _reserve_gemm_state(w.device)
    dtype = fp8_dtype()
    fmax = fp8_max(dtype)
    w32 = w.detach().float()
    amax = w32.abs().amax() if w32.numel() else w32.new_zeros(())
    scale = (amax * inv_fp8_max(fmax)).clamp_min(scale_floor(fmax)).reshape(1)
    wq = (w32 / scale).clamp(-fmax, fmax).to(dtype)
    return wq.contiguous(), scale
