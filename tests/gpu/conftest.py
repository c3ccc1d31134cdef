import pytest
import torch

def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA/ROCm GPU (tests/gpu runs on a lent H100/H200)")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)
