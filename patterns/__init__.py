"""rocm_attn.patterns: what HF subgraphs look like and what replaces them (one file per family).

Registered here, in the order the passes try them:
    ATTENTION_PATTERNS  torch-level: attention_mla -> mla_attention_dense; attention_sdpa, attention_eager
                        -> flash_attention; attention_patched: patch()'s flash_attention calls, mask proven
    LINEAR_PATTERNS     torch-level: linear (F.linear / addmm / mm, GPT-2 Conv1D), fused_projections
    POST_GRAD_PATTERNS  aten-level, inside Inductor: norm_quant, silu_mul_quant
"""

from . import (
    attention_eager,
    attention_mla,
    attention_patched,
    attention_sdpa,
    fused_projections,
    linear,
    norm_quant,
    silu_mul_quant,
)

# MLA first: it is also an SDPA call; patched last: it only refines flash_attention calls already there
ATTENTION_PATTERNS = (attention_mla, attention_sdpa, attention_eager, attention_patched)
LINEAR_PATTERNS = (linear, fused_projections)
POST_GRAD_PATTERNS = (norm_quant, silu_mul_quant)

__all__ = ["ATTENTION_PATTERNS", "LINEAR_PATTERNS", "POST_GRAD_PATTERNS"]
