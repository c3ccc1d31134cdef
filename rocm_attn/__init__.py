"""rocm-attn: PTPC-FP8 linears and ROCm-style attention for Hugging Face models, through
torch.compile.

    torch.compile(model, backend="rocm_attn")   # the Inductor backend
    rocm_attn.Config                             # every option, in one dataclass
    rocm_attn.explain(model, *inputs)            # what was rewritten, what was not and why
"""

from . import kernels  # noqa: F401  (registers the torch.ops.rocm_attn.* ops)
from .config import Config
from .explain import explain, export
from .passes.report import Report
from .kernels import Kernels, get_platform, use_kernels
from .kernels.attention import attention, available_attention_backends, register_attention_backend
from .kernels.attention_metadata import AttentionMetadata, build_metadata, build_metadata_from_allocator, split_counts
from .kernels.cache_ops import gather_cache, reshape_and_cache
from .kernels.kv_cache import BlockAllocator, CacheFullError, KVCache
from .kernels.quantize_weight import quantize_weight_per_channel, quantize_weight_per_tensor
from .hf_cache import RocmAttnCache
from .patch import FP8Embedding, FP8Linear, PatchReport, patch

__version__ = "0.1.0"

__all__ = [
    "Config", "Kernels", "get_platform", "use_kernels", "__version__",
    # FP8 weights (per output channel, once at load / compile time)
    "quantize_weight_per_channel", "quantize_weight_per_tensor",
    # graph rewrites (issue 5)
    "Report", "explain", "export",
    # attention (issue 3)
    "attention", "available_attention_backends", "register_attention_backend", "AttentionMetadata",
    "build_metadata", "build_metadata_from_allocator", "split_counts", "gather_cache", "reshape_and_cache",
    "BlockAllocator", "CacheFullError", "KVCache",
    # Hugging Face (issue 6)
    "patch", "PatchReport", "FP8Linear", "FP8Embedding", "RocmAttnCache",
]
