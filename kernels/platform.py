"""What machine we run on: ROCm / CUDA / CPU, the fp8 format, and which providers can run.

Everything here is computed once (``get_platform()`` is cached) and never mutates global
state. The fp8 format follows the hardware: MI300 (gfx942) uses ``float8_e4m3fnuz`` whose
largest finite value is 240; everything else (H100, MI350 / gfx950, CPU) uses the OCP
``float8_e4m3fn`` with max 448.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import torch

# Architectures whose fp8 units speak the "fnuz" variant (no negative zero, bias 8).
FNUZ_ARCHS = ("gfx940", "gfx941", "gfx942")


@dataclass(frozen=True)
class Platform:
    kind: str  # "rocm" | "cuda" | "cpu"
    device_name: str
    gfx_arch: str | None  # e.g. "gfx942" on ROCm, None elsewhere
    fp8_dtype: torch.dtype
    fp8_max: float
    triton_available: bool
    triton_reason: str  # why not, when triton_available is False
    aiter_available: bool
    aiter_reason: str  # why not, when aiter_available is False

    def describe(self) -> dict:
        return {
            "platform": self.kind,
            "device": self.device_name,
            "gfx_arch": self.gfx_arch,
            "fp8_dtype": str(self.fp8_dtype).replace("torch.", ""),
            "fp8_max": self.fp8_max,
            "triton": "usable" if self.triton_available else f"not usable: {self.triton_reason}",
            "aiter": "usable" if self.aiter_available else f"not usable: {self.aiter_reason}",
        }


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels run on CPU tensors through numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _gfx_arch() -> str | None:
    if not (torch.version.hip and torch.cuda.is_available()):
        return None
    name = getattr(torch.cuda.get_device_properties(0), "gcnArchName", "") or ""
    return name.split(":")[0] or None  # "gfx942:sramecc+:xnack-" -> "gfx942"


def fp8_format_for(gfx_arch: str | None) -> tuple[torch.dtype, float]:
    """(fp8 dtype, its largest finite value) for an architecture (None = not ROCm)."""
    dtype = torch.float8_e4m3fnuz if gfx_arch in FNUZ_ARCHS else torch.float8_e4m3fn
    return dtype, float(torch.finfo(dtype).max)


def _check_triton(kind: str) -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    if kind == "cpu" and not triton_interpret():
        return False, "no GPU (set TRITON_INTERPRET=1 to run Triton kernels on CPU, slowly)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install raises all sorts of things
        return False, f"import triton failed: {exc}"
    return True, ""


def _check_aiter() -> tuple[bool, str]:
    # `import aiter` raises RuntimeError (not ImportError) without ROCm, and an unrelated
    # PyPI package is also called aiter: only look when this torch is a ROCm build.
    if not torch.version.hip:
        return False, "not a ROCm build of torch (AITER is ROCm-only)"
    if importlib.util.find_spec("aiter") is None:
        return False, "the aiter package is not installed (see ROCm/aiter)"
    try:
        import aiter
    except Exception as exc:
        return False, f"import aiter failed: {exc}"
    if not hasattr(aiter, "gemm_a8w8"):
        return False, "the installed `aiter` is not ROCm AITER (no gemm_a8w8)"
    return True, ""


@functools.cache
def get_platform() -> Platform:
    if torch.cuda.is_available():
        kind = "rocm" if torch.version.hip else "cuda"
        device_name = torch.cuda.get_device_name(0)
    else:
        kind, device_name = "cpu", "cpu"
    gfx = _gfx_arch()
    fp8_dtype, fp8_max = fp8_format_for(gfx)
    triton_ok, triton_why = _check_triton(kind)
    aiter_ok, aiter_why = _check_aiter()
    return Platform(kind, device_name, gfx, fp8_dtype, fp8_max, triton_ok, triton_why, aiter_ok, aiter_why)


def fp8_dtype() -> torch.dtype:
    return get_platform().fp8_dtype


def fp8_max(dtype: torch.dtype | None = None) -> float:
    return float(torch.finfo(dtype).max) if dtype is not None else get_platform().fp8_max
