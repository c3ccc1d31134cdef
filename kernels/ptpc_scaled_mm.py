"""ptpc_scaled_mm: FP8 GEMM with per-token activation scales and per-channel weight scales.

    out[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] + bias[n]

fp32 accumulation, the scales and bias applied in the GEMM epilogue, cast to out_dtype.
xq [M, K] and wq [N, K] are fp8 (the same format), x_scale [M, 1] and w_scale [N, 1] fp32.

Providers:
- torch: ``torch._scaled_mm`` rowwise where the build takes the shape (on CUDA: bf16 out,
  K and N multiples of 16), else an exact fp32 fallback (dequantize + matmul; products of
  fp8 values are exact in fp32). Never an error for a valid shape.
- triton: a small-M kernel (decode; reads each fp8 weight byte once) for M <= SMALL_M_MAX,
  an autotuned tiled GEMM with the fused epilogue above it; on sm_90 from M = GLUON_MIN_M on, with
  precise accumulation, the Gluon warp-specialized GEMM (triton_kernels/ptpc_gemm_gluon.py), which
  auto also prefers to torch._scaled_mm there (H100: 5-9% faster than cuBLASLt's precise GEMM), and at
  mid M where its 128 x 64 tiles fit in one round on the SMs (e.g. M = 65-256 at N = 4096: 1.01-1.32x
  cuBLASLt).
- aiter: ``aiter.gemm_a8w8`` on ROCm.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .common import FLOAT_DTYPES, check_float, check_rank, check_same_device, is_fp8
from .custom_op import custom_op
from .registry import dispatch, register_provider, set_auto_order

# ---- auto choice on a CUDA GPU (tuned with benchmarks/tune_linear.py on an H100) ----------
# Per (N, K) weight shape, rows of (largest M, provider): the first row whose M bound holds
# wins. "triton" at M <= SMALL_M_MAX runs the small-M (weight-bandwidth) kernel, above it the
# tiled GEMM; "torch" is torch._scaled_mm (rowwise) where it takes the shape. The None entry
# serves every shape not listed. tune_linear.py prints this table from measurements.
SMALL_M_MAX = 64
DEFAULT_AUTO_ROWS: list[tuple[int | None, str]] = [(SMALL_M_MAX, "triton"), (None, "torch")]
# Measured on an H100 (torch 2.11, triton 3.6): the small-M kernel wins at M <= 64 (N = 28672: M <= 16),
# torch._scaled_mm from M = 128 on, on every Llama-3-8B shape.
CUDA_AUTO_TABLE: dict[tuple[int, int] | None, list[tuple[int | None, str]]] = {
    None: DEFAULT_AUTO_ROWS,
    (4096, 4096): [(64, 'triton'), (None, 'torch')],
    (6144, 4096): [(64, 'triton'), (None, 'torch')],
    (28672, 4096): [(16, 'triton'), (None, 'torch')],  # M=64: torch._scaled_mm 48.6 us, ours 52.9 (session 7)
    (4096, 14336): [(64, 'triton'), (None, 'torch')],
}


# From this M on (and precise accumulation, sm_90, Gluon importable) the Gluon GEMM runs; it beat
# cuBLASLt's precise GEMM on every Llama-3-8B shape at M = 1024-8192 on an H100 (Session 11). Below, its
# 128 x 256 tiles leave SMs idle (M = 128, N = 4096: 16 tiles); there it runs 128 x 64 tiles where they fit in
# one round on the SMs (ptpc_gemm_gluon.takes_narrow_tiles; H100, Session 21: 1.01-1.32x cuBLASLt).
GLUON_MIN_M = 1024


_GLUON_OUT_DTYPES = (torch.bfloat16, torch.float16)


def gluon_takes(xq, wq, out_dtype, fast_accum) -> bool:
    """Whether the Gluon precise GEMM runs this call (the triton provider's choice from GLUON_MIN_M on, and
    above SMALL_M_MAX where its narrow tiles fit in one round on the SMs). ROCM_ATTN_GLUON_GEMM=0 turns it
    off (then the tiled Triton GEMM / torch._scaled_mm run, as before). Asked twice per call on auto's path
    (choosing the provider, then inside it): the cheap tests go first."""
    return gluon_takes_shape(*xq.shape, wq.shape[0], xq.dtype, xq.device, out_dtype, fast_accum)


def gluon_takes_shape(M, K, N, dtype, device, out_dtype, fast_accum) -> bool:
    """gluon_takes for an xq [M, K] of `dtype` on `device` and a weight of N rows, before xq exists
    (ptpc_linear asks it before its quant)."""
    if fast_accum or M <= SMALL_M_MAX or dtype != torch.float8_e4m3fn:
        return False
    if out_dtype not in _GLUON_OUT_DTYPES:
        return False
    from .triton_kernels import ptpc_gemm_gluon

    if not (
        ptpc_gemm_gluon.takes_shape(M, K, N)
        and os.environ.get("ROCM_ATTN_GLUON_GEMM", "1") != "0"
        and ptpc_gemm_gluon.available(device)
    ):
        return False
    if M >= GLUON_MIN_M:
        return True
    return ptpc_gemm_gluon.takes_narrow_tiles(M, N, ptpc_gemm_gluon.sm_count(device))


def cuda_auto_choice(M: int, N: int | None = None, K: int | None = None) -> str:
    rows = CUDA_AUTO_TABLE.get((N, K)) or CUDA_AUTO_TABLE.get(None) or DEFAULT_AUTO_ROWS
    for max_m, provider in rows:
        if max_m is None or M <= max_m:
            return provider
    return "torch"


OP = "ptpc_scaled_mm"
OUT_DTYPES = FLOAT_DTYPES


def check_scaled_mm_inputs(op, xq, x_scale, wq, w_scale, bias, out_dtype) -> None:
    for name, t in (("xq", xq), ("wq", wq)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"rocm_attn.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not is_fp8(t.dtype):
            raise TypeError(
                f"rocm_attn.{op}: {name} has dtype {t.dtype}; expected an fp8 tensor "
                "(quantize with per_token_quant_fp8 / quantize_weight_per_channel)"
            )
    check_rank("xq", op, xq, 2, "[M, K]")
    check_rank("wq", op, wq, 2, "[N, K] (out_features x in_features)")
    if xq.dtype != wq.dtype:
        raise TypeError(f"rocm_attn.{op}: xq is {xq.dtype} but wq is {wq.dtype}; they must match")
    M, K = xq.shape
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"rocm_attn.{op}: xq is [M, K] = {tuple(xq.shape)} but wq is {tuple(wq.shape)}; "
                         f"wq must be [N, K] with K = {K}")
    check_float("x_scale", op, x_scale, (torch.float32,))
    check_float("w_scale", op, w_scale, (torch.float32,))
    if tuple(x_scale.shape) != (M, 1):
        raise ValueError(f"rocm_attn.{op}: x_scale must be [M, 1] = ({M}, 1), got {tuple(x_scale.shape)}")
    if tuple(w_scale.shape) != (N, 1):
        raise ValueError(f"rocm_attn.{op}: w_scale must be [N, 1] = ({N}, 1), got {tuple(w_scale.shape)}")
    if bias is not None:
        check_float("bias", op, bias)
        if tuple(bias.shape) != (N,):
            raise ValueError(f"rocm_attn.{op}: bias must be [N] = ({N},), got {tuple(bias.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"rocm_attn.{op}: out_dtype={out_dtype}; expected bfloat16, float16 or float32")
    check_same_device(op, xq=xq, x_scale=x_scale, wq=wq, w_scale=w_scale, bias=bias)


# ---- torch ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def scaled_mm_fallback(xq, x_scale, wq, w_scale, bias, out_dtype):
    """fp32 math: fp8 products are exact in fp32, sums in fp32. TF32 is kept off explicitly
    (fp8 values fit TF32, but a TF32 GEMM may also accumulate with fewer bits)."""
    a, b = xq.float(), wq.float().t()
    if a.is_cuda:
        with _no_tf32():
            prod = a @ b
    else:
        prod = a @ b
    out = prod * x_scale * w_scale.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _scaled_mm_takes(xq, wq, out_dtype) -> bool:
    M, K = xq.shape
    N = wq.shape[0]
    if M == 0 or K == 0 or N == 0 or not hasattr(torch, "_scaled_mm"):
        return False
    if xq.device.type == "cuda":
        # rowwise scaling on CUDA/ROCm: bf16 output, K and N multiples of 16
        return out_dtype == torch.bfloat16 and K % 16 == 0 and N % 16 == 0
    return True  # CPU torch takes any shape/dtype (tried; errors fall back)


def _scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype, fast_accum=False):
    return torch._scaled_mm(
        xq.contiguous(), wq.contiguous().t(),  # wq [N,K] row-major = wq^T column-major
        scale_a=x_scale.contiguous(), scale_b=w_scale.contiguous().t(),
        bias=bias, out_dtype=out_dtype, use_fast_accum=fast_accum,
    )


def ptpc_scaled_mm_torch(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.bfloat16, fast_accum=False):
    if _scaled_mm_takes(xq, wq, out_dtype):
        b = None if bias is None else bias.to(out_dtype)
        try:
            return _scaled_mm(xq, x_scale, wq, w_scale, b, out_dtype, fast_accum)
        except (RuntimeError, NotImplementedError):
            pass  # this build does not take the shape/dtype (or the bias): try without bias
        if b is not None:
            try:
                out = _scaled_mm(xq, x_scale, wq, w_scale, None, out_dtype, fast_accum)
                return (out.float() + bias.float()).to(out_dtype)
            except (RuntimeError, NotImplementedError):
                pass
    return scaled_mm_fallback(xq, x_scale, wq, w_scale, bias, out_dtype)


register_provider(OP, "torch")(ptpc_scaled_mm_torch)


# ---- triton ---------------------------------------------------------------------------------


def _triton_supports(xq=None, x_scale=None, wq=None, w_scale=None, bias=None, out_dtype=torch.bfloat16,
                     fast_accum=False):
    if xq is not None and xq.dtype not in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        return f"the Triton kernels take e4m3 fp8 inputs, got {xq.dtype}"
    return None


@register_provider(OP, "triton", supports=_triton_supports)
def ptpc_scaled_mm_triton(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.bfloat16, fast_accum=False):
    if xq.shape[0] <= SMALL_M_MAX:  # the tiled GEMM at M <= 64 would waste most of a 128-row tile
        from .triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch

        return ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, out_dtype, fast_accum=fast_accum)
    if gluon_takes(xq, wq, out_dtype, fast_accum):
        from .triton_kernels.ptpc_gemm_gluon import ptpc_gemm_gluon_launch

        return ptpc_gemm_gluon_launch(xq, x_scale, wq, w_scale, bias, out_dtype)
    from .triton_kernels.ptpc_gemm import ptpc_gemm_launch

    return ptpc_gemm_launch(xq, x_scale, wq, w_scale, bias, out_dtype, fast_accum=fast_accum)


# ---- aiter ----------------------------------------------------------------------------------


def _aiter_supports(xq=None, x_scale=None, wq=None, w_scale=None, bias=None, out_dtype=torch.bfloat16,
                    fast_accum=False):
    if out_dtype not in (torch.bfloat16, torch.float16):
        return f"aiter.gemm_a8w8 writes bf16/fp16, not {out_dtype}"
    return None


@register_provider(OP, "aiter", supports=_aiter_supports)
def ptpc_scaled_mm_aiter(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.bfloat16, fast_accum=False):
    # fast_accum: cuBLASLt only (aiter's a8w8 GEMM has no such switch)
    import aiter

    b = None if bias is None else bias.to(out_dtype)
    return aiter.gemm_a8w8(xq.contiguous(), wq.contiguous(), x_scale, w_scale, b, dtype=out_dtype)


def _auto_order(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.bfloat16, fast_accum=False):
    if xq.device.type != "cuda":
        return ["torch"]
    choice = cuda_auto_choice(xq.shape[0], wq.shape[0], xq.shape[1])
    if gluon_takes(xq, wq, out_dtype, fast_accum):  # never on ROCm: available() is sm_90 only
        choice = "triton"  # the Gluon precise GEMM
    if torch.version.hip:
        return ["aiter", choice, "triton", "torch"]
    return [choice, "triton", "torch"]


set_auto_order(OP, _auto_order)


# ---- the op ---------------------------------------------------------------------------------


@custom_op("ptpc_scaled_mm", mutates_args=())
def ptpc_scaled_mm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    fast_accum: bool = False,
) -> torch.Tensor:
    """(xq [M,K] fp8, x_scale [M,1] fp32, wq [N,K] fp8, w_scale [N,1] fp32, bias [N]?) -> [M, N].
    fast_accum: on sm_90 the fp8 tensor cores accumulate with ~14 mantissa bits; by default the
    partial sums are promoted into fp32 every 128 K elements. fast_accum=True skips that promotion
    (torch._scaled_mm's use_fast_accum in the torch provider, max_num_imprecise_acc in the Triton
    GEMMs; torchao rowwise's and vLLM's CUTLASS default): faster, less accurate at long K. No
    effect on CPU, under the Triton interpreter, or in aiter (ROCm's fp8 MFMA accumulates in fp32)."""
    check_scaled_mm_inputs(OP, xq, x_scale, wq, w_scale, bias, out_dtype)
    return dispatch(OP, xq.device, xq, x_scale, wq, w_scale, bias, out_dtype, fast_accum)


@ptpc_scaled_mm.register_fake
def _(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.bfloat16, fast_accum=False):
    check_scaled_mm_inputs(OP, xq, x_scale, wq, w_scale, bias, out_dtype)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)
