"""rocm-attn: PTPC-FP8 linears and ROCm-style attention for Hugging Face models, through
torch.compile.

    torch.compile(model, backend="rocm_attn")   # the Inductor backend
    rocm_attn.Config                             # every option, in one dataclass
"""

from . import kernels  # noqa: F401  (registers the torch.ops.rocm_attn.* ops)
from .config import Config
from .kernels import Kernels, get_platform, use_kernels

__version__ = "0.1.0"

__all__ = ["Config", "Kernels", "get_platform", "use_kernels", "__version__"]
