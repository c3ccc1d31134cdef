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




# CPU runs lower compiled graphs with Inductor's ATen fallbacks (the `fallback_by_default` of its lite mode): the
# rocm_attn passes and Inductor's post-grad passes (where the norm / SiLU quant fusions happen) run as in a full
# compile, but no C++ kernels are generated. g++ takes ~2 s per generated kernel on the CI machine, most of what a
# compile costs there. Tests marked full_inductor, every GPU test, and every test with
# ROCM_ATTN_TEST_FULL_INDUCTOR=1 lower to generated kernels.
LITE_INDUCTOR = not HAS_GPU and os.environ.get("ROCM_ATTN_TEST_FULL_INDUCTOR", "0") != "1"


@pytest.fixture(autouse=True)
def _inductor_codegen(request):
    import torch._inductor.config as inductor_config  # here: TRITON_INTERPRET is set before it loads

    if (not LITE_INDUCTOR or request.node.get_closest_marker("full_inductor") is not None
            or not hasattr(inductor_config, "fallback_by_default")):
        yield
        return
    with inductor_config.patch(fallback_by_default=True):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
