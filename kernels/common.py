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


INDEX_DTYPES = (torch.int32, torch.int64)


def check_index(op: str, name: str, t: torch.Tensor, rank: int, doc: str) -> None:
    """An integer index tensor (block table, lengths, slots) of the given rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rocm_attn.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"rocm_attn.{op}: {name} must be int32 or int64, got {t.dtype}")
    check_rank(name, op, t, rank, doc)


def check_gather_index(op: str, block_table: torch.Tensor, cu_seq_lens: torch.Tensor,
                       seq_starts: torch.Tensor) -> None:
    """The index arguments of a paged-cache gather: one row, one start and one length per sequence."""
    check_index(op, "block_table", block_table, 2, "[B, max_blocks]")
    check_index(op, "cu_seq_lens", cu_seq_lens, 1, "[B+1]")
    check_index(op, "seq_starts", seq_starts, 1, "[B]")
    b = block_table.shape[0]
    if cu_seq_lens.shape[0] != b + 1 or seq_starts.shape[0] != b:
        raise ValueError(f"rocm_attn.{op}: block_table has {b} rows, so cu_seq_lens needs {b + 1} entries and "
                         f"seq_starts {b}; got {cu_seq_lens.shape[0]} and {seq_starts.shape[0]}")
