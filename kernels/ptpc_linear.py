"""ptpc_linear: the whole PTPC-FP8 linear, quantization included; the op the linear rewrite targets.

    ptpc_linear(x[..., K], wq[N, K], w_scale[N, 1], bias[N]?) -> [..., N] in x's dtype
      = ptpc_scaled_mm(*per_token_quant_fp8(x), wq, w_scale, bias, out_dtype=x.dtype)

Providers:
- torch: the reference composition (torch quant + torch ptpc_scaled_mm).
- triton: per_token_quant_fp8 then ptpc_scaled_mm, each through its own provider choice
  (auto: the Triton quant kernel and the GEMM from the table in ptpc_scaled_mm.py; forced
  "triton": the Triton kernels). Where those are our quant and either the small-M GEMM or the Gluon GEMM
  in one round of tiles on the SMs, the two launch as a PDL pair (_pdl_pair). At M <= 4 (8 at K <= 2048)
  and K <= 4096 on sm_90 the whole linear runs as one Gluon launch instead (_one_launch_takes: the weight
  stream starts before the quant; Sessions 26-27). Triton one-launch kernels of sessions 4, 8 and 25 lost to the pair.
- aiter: AITER quant + gemm_a8w8.

fp8_per_tensor_linear(x, wq, w_scale[1], bias?) is classic per-tensor FP8 (one dynamic
activation scale for the whole x, one weight scale), for side-by-side accuracy comparisons.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch

from .common import check_float, check_rank, check_same_device, is_fp8
from .custom_op import custom_op
from .per_token_quant import inv_fp8_max, per_token_quant_fp8_aiter, per_token_quant_fp8_torch, scale_floor
from .platform import fp8_dtype, fp8_max
from .ptpc_scaled_mm import (SMALL_M_MAX, cuda_auto_choice, gluon_takes_shape, ptpc_scaled_mm_aiter,
                             ptpc_scaled_mm_torch, scaled_mm_fallback)
from .registry import Kernels, dispatch, register_provider, requested_kernels, select

OP = "ptpc_linear"


def check_linear_inputs(op, x, wq, w_scale, bias, per_tensor=False) -> None:
    check_float("x", op, x)
    check_rank("x", op, x, tuple(range(1, 9)), "[..., K] (any leading dims)")
    if not isinstance(wq, torch.Tensor) or not is_fp8(wq.dtype):
        got = wq.dtype if isinstance(wq, torch.Tensor) else type(wq).__name__
        raise TypeError(f"rocm_attn.{op}: wq must be an fp8 tensor (quantize_weight_per_"
                        f"{'tensor' if per_tensor else 'channel'}), got {got}")
    check_rank("wq", op, wq, 2, "[N, K] (out_features x in_features)")
    if not per_tensor and wq.dtype != fp8_dtype():
        raise TypeError(f"rocm_attn.{op}: wq is {wq.dtype} but this platform quantizes activations to "
                        f"{fp8_dtype()}; quantize the weight with quantize_weight_per_channel here")
    N, K = wq.shape
    if x.shape[-1] != K:
        raise ValueError(f"rocm_attn.{op}: x has {x.shape[-1]} features (shape {tuple(x.shape)}) "
                         f"but wq is [N, K] = {tuple(wq.shape)}; the last dim of x must be K = {K}")
    check_float("w_scale", op, w_scale, (torch.float32,))
    want = (1,) if per_tensor else (N, 1)
    if tuple(w_scale.shape) != want:
        raise ValueError(f"rocm_attn.{op}: w_scale must have shape {want}, got {tuple(w_scale.shape)}")
    if bias is not None:
        check_float("bias", op, bias)
        if tuple(bias.shape) != (N,):
            raise ValueError(f"rocm_attn.{op}: bias must be [N] = ({N},), got {tuple(bias.shape)}")
    check_same_device(op, x=x, wq=wq, w_scale=w_scale, bias=bias)


def _rows(x):
    """x [..., K] -> [M, K] (a view when possible)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # not -1: K may be 0


# ---- providers ------------------------------------------------------------------------------


def ptpc_linear_torch(x, wq, w_scale, bias=None, fast_accum=False):
    x2 = _rows(x)
    xq, x_scale = per_token_quant_fp8_torch(x2)
    out = ptpc_scaled_mm_torch(xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum)
    return out.reshape(*x.shape[:-1], wq.shape[0])


register_provider(OP, "torch")(ptpc_linear_torch)


def _triton_supports(x=None, wq=None, w_scale=None, bias=None, fast_accum=False):
    if wq is not None and wq.dtype not in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        return f"the Triton kernels take e4m3 fp8 weights, got {wq.dtype}"
    return None


def _pdl_pair(x2, wq, out_dtype, fast_accum) -> str | None:
    """Which programmatic-dependent-launch pair the triton provider launches (sm_90 PDL: the quant lets the
    GEMM's programs start while it finishes; the GEMM waits for its output before reading), or None:
    - "small_m": M <= SMALL_M_MAX where the GEMM would be the small-M kernel (H100, Session 24: 0.4-0.9 us
      less per call, K = N = 4096, M = 1: 11.4 -> 10.8 us);
    - "gluon": where the GEMM would be the Gluon GEMM and ptpc_gemm_gluon.pdl_pays (Session 22: K = N = 4096,
      M = 256: 16.1 -> 14.7 us).
    Both only where the quant would be our Triton kernel. ROCM_ATTN_PDL=0 turns them off."""
    wanted = requested_kernels()
    if os.environ.get("ROCM_ATTN_PDL") == "0" or wanted not in (Kernels.AUTO, Kernels.TRITON):
        return None
    M, K = x2.shape
    N = wq.shape[0]
    if wq.dtype != torch.float8_e4m3fn or M == 0:
        return None
    if M <= SMALL_M_MAX:
        from .triton_kernels.ptpc_gemm_small_m import pdl_capable

        return "small_m" if pdl_capable(x2.device) and _small_m_after_triton_quant(x2, wq, wanted) else None
    if gluon_takes_shape(M, K, N, fp8_dtype(), x2.device, out_dtype, fast_accum):
        from .triton_kernels import ptpc_gemm_gluon

        if ptpc_gemm_gluon.pdl_pays(M, K, N, ptpc_gemm_gluon.sm_count(x2.device)) and _triton_quant_runs(x2):
            return "gluon"
    return None


def _triton_quant_runs(x2) -> bool:
    """Whether dispatch would quantize x2 with our Triton kernel."""
    return select("per_token_quant_fp8", x2.device, x2)[0] == "triton"


def _small_m_after_triton_quant(x2, wq, wanted) -> bool:
    """Whether the triton provider's two launches would be our Triton quant, then the small-M GEMM (auto's table
    or forced "triton"); the PDL pair and the one launch both replace exactly that."""
    M, K = x2.shape
    if wanted is not Kernels.TRITON and cuda_auto_choice(M, wq.shape[0], K) != "triton":
        return False
    return _triton_quant_runs(x2)


ONE_LAUNCH_MAX_K = 4096  # the one-launch Gluon linear beat the PDL pair at K = 4096, not at 14336 (H100, Session 26)
ONE_LAUNCH_ROUND_PER_SM = 2  # above 4 rows: programs per SM in the one round it must fit (see _one_launch_takes)


def one_launch_max_m(K: int) -> int:
    """The most rows the one launch takes: 8 at K <= 2048 (Session 27), 4 up to ONE_LAUNCH_MAX_K (Session 26)."""
    return 8 if K <= 2048 else 4


def _one_launch_takes(x2, wq, out_dtype, fast_accum) -> bool:
    """Whether the triton provider runs the linear as one Gluon launch (ptpc_linear_small_m_gluon.py: each program
    starts its weight stream, then quantizes x while it arrives). Where it was measured faster than the small-M
    PDL pair on an H100 (Session 26, benchmarks/experiments_s26): K = N = 4096, M = 1 / 2 / 4: 9.6 / 10.3 / 10.6
    against 10.8 / 10.9 / 10.9 us; N = 6144 and 28672 at M = 1: 12.5 / 45.8 against 14.0 / 47.6. It lost at M = 8
    (11.4 against 10.9) and at K = 14336 (M = 1: 27.2 against 26.5). At K = 1024 and 2048 (N = 2048 / 4096,
    Session 27, benchmarks/experiments_s27/s27_small_k.py) it won at every M <= 8 (M = 8, K = 2048, N = 4096: 8.0
    against 8.8; there the pair is no faster than bf16) and lost or tied at M = 16; above 4 rows (~220 registers a
    thread with Triton 3.6: 2 programs per SM) it lost where its programs took two rounds (K = 2048, N = 8192, M = 8:
    512 programs, 11.1 against 10.9). So: M <= one_launch_max_m(K), K <= ONE_LAUNCH_MAX_K, above 4 rows only with
    at most ONE_LAUNCH_ROUND_PER_SM programs per SM, where the small-M GEMM would run after our Triton quant (auto's
    table or forced triton), precise accumulation, bf16 / fp16 x, e4m3fn weights, an sm_90 GPU with Gluon.
    ROCM_ATTN_GLUON_SMALL_M=0 turns it off."""
    M, K = x2.shape
    if not (0 < M <= one_launch_max_m(K) and K <= ONE_LAUNCH_MAX_K) or fast_accum or \
            os.environ.get("ROCM_ATTN_GLUON_SMALL_M") == "0":
        return False
    wanted = requested_kernels()
    if wanted not in (Kernels.AUTO, Kernels.TRITON) or x2.device.type != "cuda":
        return False
    from .triton_kernels import ptpc_gemm_gluon
    from .triton_kernels import ptpc_linear_small_m_gluon as one_launch
    from .triton_kernels.launch_cache import cdiv

    stages, split_k = one_launch.default_config(K)
    if one_launch.shape_reason(M, K, out_dtype, wq.dtype, stages, split_k) is not None or \
            not one_launch.available(x2.device):
        return False
    programs = cdiv(wq.shape[0], one_launch.BLOCK_N) * split_k  # column tiles x K slices
    if M > 4 and programs > ONE_LAUNCH_ROUND_PER_SM * ptpc_gemm_gluon.sm_count(x2.device):
        return False
    return _small_m_after_triton_quant(x2, wq, wanted)


def _one_launch_linear(x, wq, w_scale, bias=None, fast_accum=False):
    """The linear in one Gluon launch (where _one_launch_takes); the two launches when a CUDA graph is being
    captured and no split-K counters can be had without allocating (the small-M GEMM then drops split-K)."""
    from .triton_kernels.ptpc_linear_small_m_gluon import ptpc_linear_small_m_gluon

    out = ptpc_linear_small_m_gluon(x, wq, w_scale, bias, fp8_max())
    return out if out is not None else _two_launch_linear(x, wq, w_scale, bias, fast_accum)


def _pdl_gluon_linear(x, wq, w_scale, bias=None, fast_accum=False):
    """The quant then the Gluon GEMM, launched as a PDL pair (where _pdl_pair says "gluon", which checked
    fast_accum)."""
    from .triton_kernels.per_token_quant import per_token_quant_fp8_launch
    from .triton_kernels.ptpc_gemm_gluon import ptpc_gemm_gluon_launch

    xq, x_scale = per_token_quant_fp8_launch(_rows(x), fp8_dtype(), fp8_max(), launch_dependents=True)
    out = ptpc_gemm_gluon_launch(xq, x_scale, wq, w_scale, bias, x.dtype, pdl=True)
    return out.reshape(*x.shape[:-1], wq.shape[0])


def _pdl_small_m_linear(x, wq, w_scale, bias=None, fast_accum=False):
    """The quant then the small-M GEMM, launched as a PDL pair (where _pdl_pair says "small_m")."""
    from .triton_kernels.per_token_quant import per_token_quant_fp8_launch
    from .triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch

    xq, x_scale = per_token_quant_fp8_launch(_rows(x), fp8_dtype(), fp8_max(), launch_dependents=True)
    out = ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum=fast_accum, pdl=True)
    return out.reshape(*x.shape[:-1], wq.shape[0])


_PDL_LINEARS = {"gluon": _pdl_gluon_linear, "small_m": _pdl_small_m_linear}


@register_provider(OP, "triton", supports=_triton_supports)
def ptpc_linear_triton(x, wq, w_scale, bias=None, fast_accum=False):
    if _one_launch_takes(_rows(x), wq, x.dtype, fast_accum):
        return _one_launch_linear(x, wq, w_scale, bias, fast_accum)
    return _two_launch_linear(x, wq, w_scale, bias, fast_accum)


def _two_launch_linear(x, wq, w_scale, bias=None, fast_accum=False):
    """The quant, then the GEMM: a PDL pair where _pdl_pair says so, else each through its provider choice."""
    x2 = _rows(x)
    pair = _pdl_pair(x2, wq, x.dtype, fast_accum)
    if pair is not None:
        return _PDL_LINEARS[pair](x, wq, w_scale, bias, fast_accum)
    xq, x_scale = dispatch("per_token_quant_fp8", x.device, x2)
    out = dispatch("ptpc_scaled_mm", x.device, xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum)
    return out.reshape(*x.shape[:-1], wq.shape[0])


def _aiter_supports(x=None, wq=None, w_scale=None, bias=None, fast_accum=False):
    if x is not None and x.dtype not in (torch.bfloat16, torch.float16):
        return f"aiter.gemm_a8w8 writes bf16/fp16, not {x.dtype}"
    return None


@register_provider(OP, "aiter", supports=_aiter_supports)
def ptpc_linear_aiter(x, wq, w_scale, bias=None, fast_accum=False):
    xq, x_scale = per_token_quant_fp8_aiter(_rows(x))
    out = ptpc_scaled_mm_aiter(xq, x_scale, wq, w_scale, bias, x.dtype)
    return out.reshape(*x.shape[:-1], wq.shape[0])


# ---- eager module calls ---------------------------------------------------------------------
# An eager torch.ops.rocm_attn.ptpc_linear call spends host time on the dispatcher (and our autograd
# kernel), the input checks and three provider choices (the linear's, the quant's, the GEMM's) before
# the two kernel launches. HF continuous batching and eager generate() make 4 such calls per layer per
# step, and wait on the host. A module's calls repeat the same kind of call, so FP8Linear runs them
# through a plan made on the first call of each kind: the same checks, choices and implementations, made
# once. H100 machine (Session 20): 47-75 us less per call, of 180-250.

_EAGER_PLANS: dict[tuple, Callable] = {}
_EAGER_PLANS_MAX = 4096  # one per kind of call (M is part of it); a prefill of many lengths refills it


def _op_call(x, wq, w_scale, bias, fast_accum):
    if fast_accum:
        return torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias, fast_accum=True)
    return torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)


def _needs_the_op(x, wq, w_scale, bias) -> bool:
    """Whether this call must go through torch.ops.rocm_attn.ptpc_linear itself: while compiling or
    tracing (the passes match the op), for tensor subclasses (fake, functional, DTensor, functorch
    wrappers), under a dispatch or function mode (FakeTensorMode, FlopCounterMode, torch.device(...)),
    under the profiler (it names the op), or where autograd must see the op (it raises on backward)."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return True
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return True
    if torch._C._autograd._profiler_enabled() or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, wq, w_scale, bias))


def _plan_key(x, wq, w_scale, bias, fast_accum) -> tuple:
    """Everything the input checks and the provider choices read (the GEMM's choice reads M)."""
    return (requested_kernels(), x.dtype, x.device, x.dim(), x.shape[-1], math.prod(x.shape[:-1]),
            wq.dtype, wq.shape, wq.device, w_scale.dtype, w_scale.shape, w_scale.device,
            None if bias is None else (bias.dtype, bias.shape, bias.device), fast_accum,
            os.environ.get("ROCM_ATTN_GLUON_GEMM"), os.environ.get("ROCM_ATTN_PDL"),
            os.environ.get("ROCM_ATTN_GLUON_SMALL_M"),
            os.environ.get("TRITON_INTERPRET"))


def ptpc_linear_eager(x, wq, w_scale, bias=None, fast_accum=False):
    """torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias, fast_accum) for a module's eager call: the same
    checks, providers and result, with the checks and choices made on the first call of each kind (see
    _plan_key) and kept. Calls that must see the op (_needs_the_op) go through it, and so does every call
    while ROCM_ATTN_EAGER_PLANS=0 (to rule this path out when debugging, or to time it against the op)."""
    if os.environ.get("ROCM_ATTN_EAGER_PLANS") == "0" or _needs_the_op(x, wq, w_scale, bias):
        return _op_call(x, wq, w_scale, bias, fast_accum)
    key = _plan_key(x, wq, w_scale, bias, fast_accum)
    plan = _EAGER_PLANS.get(key)
    if plan is None:
        out, plan = _first_call(x, wq, w_scale, bias, fast_accum)
        if len(_EAGER_PLANS) >= _EAGER_PLANS_MAX:
            _EAGER_PLANS.clear()
        _EAGER_PLANS[key] = plan
        return out
    return plan(x, wq, w_scale, bias, fast_accum)


def _first_call(x, wq, w_scale, bias, fast_accum):
    """Run the call as the op would (checks, then each choice on the real inputs) and return
    (output, plan): the function later calls of this kind run."""
    check_linear_inputs(OP, x, wq, w_scale, bias)
    name, linear_fn = select(OP, x.device, x, wq, w_scale, bias, fast_accum)
    if name != "triton":  # torch / aiter: one function, no inner choices
        return linear_fn(x, wq, w_scale, bias, fast_accum), linear_fn
    x2 = _rows(x)
    if _one_launch_takes(x2, wq, x.dtype, fast_accum):
        return _one_launch_linear(x, wq, w_scale, bias, fast_accum), _one_launch_linear
    pair = _pdl_pair(x2, wq, x.dtype, fast_accum)
    if pair is not None:
        pdl_linear = _PDL_LINEARS[pair]
        return pdl_linear(x, wq, w_scale, bias, fast_accum), pdl_linear
    _, quant_fn = select("per_token_quant_fp8", x.device, x2)
    xq, x_scale = quant_fn(x2)
    _, mm_fn = select("ptpc_scaled_mm", x.device, xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum)
    out = mm_fn(xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum).reshape(*x.shape[:-1], wq.shape[0])

    def quant_then_gemm(x, wq, w_scale, bias, fast_accum):
        xq, x_scale = quant_fn(_rows(x))
        return mm_fn(xq, x_scale, wq, w_scale, bias, x.dtype, fast_accum).reshape(*x.shape[:-1], wq.shape[0])

    return out, quant_then_gemm


# ---- the ops --------------------------------------------------------------------------------


@custom_op("ptpc_linear", mutates_args=())
def ptpc_linear(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
    fast_accum: bool = False,
) -> torch.Tensor:
    """x [..., K] (bf16/fp16/fp32), wq [N, K] fp8, w_scale [N, 1] fp32, bias [N]? -> [..., N], x's dtype.
    fast_accum: as ptpc_scaled_mm's (sm_90 only; off by default)."""
    check_linear_inputs(OP, x, wq, w_scale, bias)
    return dispatch(OP, x.device, x, wq, w_scale, bias, fast_accum)


@ptpc_linear.register_fake
def _(x, wq, w_scale, bias=None, fast_accum=False):
    check_linear_inputs(OP, x, wq, w_scale, bias)
    return x.new_empty((*x.shape[:-1], wq.shape[0]))


def fp8_per_tensor_linear_torch(x, wq, w_scale, bias=None):
    """One dynamic scale for all of x (amax * fp32(1/fp8_max)), one for the weight."""
    fmax = fp8_max(wq.dtype)
    x2 = _rows(x).float()
    amax = x2.abs().amax() if x2.numel() else x2.new_zeros(())
    x_scale = (amax * inv_fp8_max(fmax)).clamp_min(scale_floor(fmax)).reshape(1, 1)
    xq = (x2 / x_scale).clamp(-fmax, fmax).to(wq.dtype)
    out = None
    if x.device.type == "cuda" and hasattr(torch, "_scaled_mm") and xq.shape[0] > 0:
        try:  # tensor-wise scales: any out dtype; K, N multiples of 16
            out = torch._scaled_mm(xq, wq.contiguous().t(), scale_a=x_scale.reshape(()),
                                   scale_b=w_scale.reshape(()), out_dtype=torch.float32)
            out = out + bias.float() if bias is not None else out
            out = out.to(x.dtype)
        except (RuntimeError, NotImplementedError):
            out = None
    if out is None:
        w_scale_rows = w_scale.reshape(1, 1).expand(wq.shape[0], 1)
        out = scaled_mm_fallback(xq, x_scale.expand(xq.shape[0], 1), wq, w_scale_rows, bias, x.dtype)
    return out.reshape(*x.shape[:-1], wq.shape[0])


register_provider("fp8_per_tensor_linear", "torch")(fp8_per_tensor_linear_torch)


@custom_op("fp8_per_tensor_linear", mutates_args=())
def fp8_per_tensor_linear(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-tensor FP8 linear: x [..., K], wq [N, K] fp8, w_scale [1] fp32, bias [N]? -> [..., N]."""
    check_linear_inputs("fp8_per_tensor_linear", x, wq, w_scale, bias, per_tensor=True)
    return dispatch("fp8_per_tensor_linear", x.device, x, wq, w_scale, bias)


@fp8_per_tensor_linear.register_fake
def _(x, wq, w_scale, bias=None):
    check_linear_inputs("fp8_per_tensor_linear", x, wq, w_scale, bias, per_tensor=True)
    return x.new_empty((*x.shape[:-1], wq.shape[0]))
