"""rocm_attn.kernels: custom ops (namespace ``rocm_attn``) and their providers.

Importing this package registers every op with torch.library. It imports nothing else of
rocm_attn, so an engine author can use the kernels alone:

    import rocm_attn.kernels
    xq, scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
"""

# This folder installs as rocm_attn.kernels. Run from the repo root, Python can also see it as a
# top-level `kernels` (an unrelated PyPI package that transformers probes for, and imports when it
# finds no metadata). Imported under that name it stays empty (no __version__, so transformers
# treats it as absent) instead of registering every op a second time.
if __name__ == "rocm_attn.kernels":
    # Each module registers its ops on import. Order: dependencies first.
    from . import (  # noqa: F401
        per_token_quant,
        quantize_weight,
        ptpc_scaled_mm,
        ptpc_linear,
        fused_quant,
        kv_cache,
        attention_metadata,
        cache_ops,
        merge_attn_states,
        flash_attention,
        paged_decode,
        unified_attention,
        attention,
        split_attention,
        mla,
        mla_attention,
    )
    from .platform import Platform, fp8_dtype, fp8_max, get_platform
    from .registry import Kernels, ProviderUnavailableError, registered_ops, select, use_kernels

    __all__ = [
        "Kernels",
        "Platform",
        "ProviderUnavailableError",
        "fp8_dtype",
        "fp8_max",
        "get_platform",
        "registered_ops",
        "select",
        "use_kernels",
    ]
