"""One configuration dataclass for the whole library.

Set it three ways, later winning: defaults < ``ROCM_ATTN_*`` environment variables <
explicit values (``torch.compile(..., options={...})`` or ``patch(model, ...)``).
It is part of every pass uuid, so a config change never reuses a stale compiled graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from .kernels.registry import parse_kernels

QUANTIZATIONS = ("ptpc_fp8", "fp8_per_tensor", "none")
ATTENTION_BACKENDS = ("TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN", "ROCM_AITER_FA", "ROCM_ATTN")
DEFAULT_SKIP_MODULES = ("lm_head", "embed", "wte", "wpe", "score", "classifier")


@dataclass(frozen=True)
class Config:
    quantization: str = "ptpc_fp8"
    attention_backend: str = "TRITON_ATTN"
    # module-name patterns (fnmatch, or plain substrings) whose linears stay unquantized
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    kernels: str = "auto"  # auto | torch | triton | aiter
    dump_dir: str | None = None
    strict: bool = False  # raise instead of falling back when a pass fails
    rewrite_attention: bool = True
    fuse_projections: bool = True  # q/k/v and gate/up sharing an input -> one GEMM
    # PTPC GEMMs (cuBLASLt and Triton) without the fp32 promotion of sm_90's fp8 partial sums
    # (torchao rowwise's and vLLM's CUTLASS default): faster, less accurate at long K
    fast_accum: bool = False
    # patch() only: the input embedding table in fp8 with one fp32 scale per row (a gather, so no GEMM cost;
    # +0.2% perplexity on SmolLM2, inside the noise; Llama-3.1-8B weights 0.566x -> 0.533x bf16)
    quantize_embeddings: bool = True
    extend_workspace_tokens: int = 32768
    # patch() only: the cache generate() makes holds its length rounded up (at least 256 positions, then a
    # multiple of a quarter of its power of two: at most 25% more), so calls of slightly different lengths
    # share one cache and one compiled decode instead of recompiling; False sizes it exactly (HF's way)
    round_generate_cache: bool = True

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization={self.quantization!r}; expected one of {QUANTIZATIONS}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend={self.attention_backend!r}; expected one of {ATTENTION_BACKENDS}"
            )
        parse_kernels(self.kernels)
        if isinstance(self.skip_modules, str):
            object.__setattr__(self, "skip_modules", tuple(s for s in self.skip_modules.split(",") if s))
        else:
            object.__setattr__(self, "skip_modules", tuple(self.skip_modules))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # a bool option given as text ("false", "off") would be truthy: refuse it rather than guess
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"{f.name}={value!r}; expected True or False")
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name}={value!r}; expected an int")
        if self.extend_workspace_tokens < 1:
            raise ValueError("extend_workspace_tokens must be >= 1")

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        """Defaults, then ROCM_ATTN_<FIELD> variables, then ``overrides``."""
        values = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"ROCM_ATTN_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f, raw)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            names = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown rocm_attn option(s) {sorted(unknown)}; known: {names}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Stable text for cache keys / pass uuids."""
        return json.dumps(self.to_dict(), sort_keys=True)


BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
              "off": False}


def _parse(f: dataclasses.Field, raw: str):
    name = f"ROCM_ATTN_{f.name.upper()}"
    if f.type in ("bool", bool):
        value = BOOL_WORDS.get(raw.strip().lower())
        if value is None:
            raise ValueError(f"{name}={raw!r}; expected one of {', '.join(BOOL_WORDS)}")
        return value
    if f.type in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}; expected an int") from None
    if "tuple" in str(f.type):
        return tuple(s.strip() for s in raw.split(",") if s.strip())
    if "None" in str(f.type) and raw == "":
        return None
    return raw


