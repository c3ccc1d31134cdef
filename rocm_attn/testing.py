"""Helpers for tests and benchmarks (tests use --import-mode=importlib, so shared helpers
live in the package rather than in conftest)."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64; 0.0 for empty tensors."""
    if ref.numel() == 0:
        return 0.0
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
