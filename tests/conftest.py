"""Shared test setup.

Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1), which must be
set before any @triton.jit function is created, so it is set here, before imports.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `python -m pytest` puts the repo root on sys.path; then transformers' hub-kernels integration
# imports our kernels/ as the top-level `kernels` package, registering every rocm_attn op a second
# time against a second provider registry (use_kernels() is then ignored). Drop the root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

HAS_GPU = torch.cuda.is_available()


@pytest.fixture(scope="session", autouse=True)
def _converted_gguf_cache(tmp_path_factory):
    """rocm_attn.demo.load converts a .gguf to a HF directory once per cache directory. Give the run one
    of its own (not the user's ~/.cache), shared by pytest-xdist's workers (their base temp dirs have one
    parent) and by the examples the tests run as subprocesses: SmolLM2 is then read from its GGUF once."""
    if "ROCM_ATTN_CACHE_DIR" in os.environ:
        yield
        return
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    os.environ["ROCM_ATTN_CACHE_DIR"] = str(root / "rocm_attn_cache")
    yield
    os.environ.pop("ROCM_ATTN_CACHE_DIR", None)




@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
