"""Triton kernels, one per file, each with its launcher. Imported lazily by the providers
in rocm_attn.kernels, so the package imports without Triton installed."""
