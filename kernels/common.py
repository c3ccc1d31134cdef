"""Small helpers shared by the op files: input checks that give clear errors."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, op: str, t: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rocm_attn.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"rocm_attn.{op}: {name} has dtype {t.dtype}; expected one of {allowed}")


def check_rank(name: str, op: str, t: torch.Tensor, rank: int | tuple[int, ...], shape_doc: str) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if t.dim() not in ranks:
        raise ValueError(f"rocm_attn.{op}: {name} must be {shape_doc}, got shape {tuple(t.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"rocm_attn.{op}: all tensors must be on one device, got {desc}")


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz)
