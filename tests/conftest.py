"""Shared test setup.

Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1), which must be
set before any @triton.jit function is created, so it is set here, before imports.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_GPU = torch.cuda.is_available()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm()
    if ref.numel() == 0:
        return 0.0
    return float((out - ref).norm() / denom.clamp_min(1e-30))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
