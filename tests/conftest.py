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




@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
