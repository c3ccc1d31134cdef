"""PTPC-FP8 linear ops on the GPU at Llama-3-8B sizes: every provider vs an fp64 reference.

    python -m pytest tests/gpu/test_linear_gpu.py -q -x

Runs in well under a minute on an H100 (the first Triton calls autotune). Skipped without a GPU.
Each provider is its own test case (the failure names it). Activations come from their own
generator: with the same seed as the weights, x's rows were the weight's rows / 0.02, which
made every diagonal output a sum of same-sign terms (it found the Hopper fp8 accumulation
bug; test_gemm_accumulation_precision keeps that case on purpose).
"""

import pytest
import torch
from rocm_attn.kernels import fp8_dtype, fp8_max, get_platform, use_kernels
from rocm_attn.kernels.quantize_weight import quantize_weight_per_channel

from rocm_attn.testing import rel_err

DEV = "cuda"
LLAMA_KN = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
MS = [1, 16, 128, 4096]


def gpu_providers():
    plat = get_platform()
    return ["torch", "triton", "auto"] + (["aiter"] if plat.aiter_available else [])


PROVIDERS = gpu_providers()


def activations(M, K, seed):
    gen = torch.Generator(device=DEV).manual_seed(1000 + seed)
    return torch.randn(M, K, device=DEV, dtype=torch.bfloat16, generator=gen)


def reference(xq, x_scale, wq, w_scale, bias):
    """fp64: the exact PTPC product, and the sum of |terms| each output is built from (its
    natural error scale: accumulation errors grow with it, not with the output's value)."""
    xs, ws = x_scale.double(), w_scale.double().t()
    ref = (xq.double() @ wq.double().t()) * xs * ws
    mag = (xq.double().abs() @ wq.double().abs().t()) * xs * ws
    if bias is not None:
        ref, mag = ref + bias.double(), mag + bias.double().abs()
    return ref, mag


def check_close(out, ref, mag, what):
    """Norm-relative error < 1e-2, and elementwise: bf16 output rounding (2^-8 of the value)
    plus fp32 / tensor-core accumulation (2e-3 of the sum of |terms|)."""
    assert out.shape == ref.shape, what
    err = rel_err(out, ref)
    assert err < 1e-2, f"{what}: rel_err {err:.3g}"
    diff = (out.double() - ref).abs()
    bound = 2.0 ** -8 * ref.abs() + 2e-3 * mag
    bad = diff > bound
    if bad.any():
        i = int((diff - bound).argmax())
        idx = divmod(i, ref.shape[1])
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.numel()} elements off; worst at {idx}: "
                             f"out {out.flatten()[i].item():.5g}, ref {ref.flatten()[i].item():.5g}, "
                             f"allowed +-{bound.flatten()[i].item():.3g}")


@pytest.fixture(scope="module")
def weights():
    gen = torch.Generator(device=DEV).manual_seed(0)
    out = {}
    for K, N in LLAMA_KN:
        w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16, generator=gen) * 0.02
        bias = torch.randn(N, device=DEV, dtype=torch.bfloat16, generator=gen)
        out[K, N] = (w, *quantize_weight_per_channel(w), bias)
    return out


_CASES = {}


def case(weights, K, N, M):
    """x, its torch quantization and the fp64 reference, shared by the provider cases."""
    key = (K, N, M)
    if key not in _CASES:
        _CASES.clear()  # one shape at a time: the references are large
        _, wq, w_scale, bias = weights[K, N]
        x = activations(M, K, seed=M)
        with use_kernels("torch"):
            xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
        _CASES[key] = (x, xq, x_scale, *reference(xq, x_scale, wq, w_scale, bias))
    return _CASES[key]


@pytest.mark.parametrize("K,N", LLAMA_KN)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ptpc_scaled_mm(weights, K, N, M, provider):
    _, wq, w_scale, bias = weights[K, N]
    _, xq, x_scale, ref, mag = case(weights, K, N, M)
    with use_kernels(provider):
        out = torch.ops.rocm_attn.ptpc_scaled_mm(xq, x_scale, wq, w_scale, bias)
    assert out.dtype == torch.bfloat16, provider
    check_close(out, ref, mag, f"ptpc_scaled_mm[{provider}] M={M} K={K} N={N}")


@pytest.mark.parametrize("K,N", LLAMA_KN)
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ptpc_linear(weights, K, N, M, provider):
    w, wq, w_scale, bias = weights[K, N]
    x, _, _, ref, mag = case(weights, K, N, M)
    with use_kernels(provider):
        out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)
    check_close(out, ref, mag, f"ptpc_linear[{provider}] M={M} K={K} N={N}")
    # the accuracy target against the unquantized product
    exact = x.double() @ w.double().t() + bias.double()
    assert rel_err(out, exact) < 5e-2, provider


@pytest.mark.parametrize("M", [1, 4, 16, 128, 2048])  # the one launch, the PDL pair, mid M, the Gluon GEMM
@pytest.mark.parametrize("provider", ["auto", "triton"])
def test_a_nan_token_spoils_only_its_own_row(weights, M, provider):
    """A NaN in one token makes that output row NaN (never a finite value) and leaves the other rows bit for bit
    as with that token zeroed: the per-token scale isolates it. (The Triton interpreter cannot test this: its
    fp8 cast turns NaN into 384.)"""
    _, wq, w_scale, bias = weights[4096, 4096]
    x = activations(M, 4096, seed=M)
    row = M // 2
    clean = x.clone()
    clean[row] = 0
    x[row, 7] = float("nan")
    with use_kernels(provider):
        out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)
        want = torch.ops.rocm_attn.ptpc_linear(clean, wq, w_scale, bias)
        xq, _ = torch.ops.rocm_attn.rms_norm_quant_fp8(x, torch.ones(4096, device=DEV, dtype=x.dtype), 1e-5)
    assert out[row].isnan().all()
    others = torch.arange(M, device=DEV) != row
    assert torch.equal(out[others], want[others])
    assert xq[row].float().isnan().any() and not xq[others].float().isnan().any()


@pytest.mark.parametrize("M", [16, 64, 128, 4096])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_gemm_accumulation_precision(weights, M, provider):
    """x's rows = the weight's rows: the diagonal outputs sum 4096 positive terms, where
    truncating fp8 tensor-core accumulation loses ~6% (Triton's default on Hopper)."""
    w, wq, w_scale, bias = weights[4096, 6144]
    x = w[:M] * 50.0
    with use_kernels("torch"):
        xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    ref, mag = reference(xq, x_scale, wq, w_scale, None)
    with use_kernels(provider):
        out = torch.ops.rocm_attn.ptpc_scaled_mm(xq, x_scale, wq, w_scale)
        lin = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale)
    check_close(out, ref, mag, f"ptpc_scaled_mm[{provider}] x = w rows, M={M}")
    check_close(lin, ref, mag, f"ptpc_linear[{provider}] x = w rows, M={M}")
    diag = torch.arange(M, device=DEV)
    rel = ((out.double()[diag, diag] - ref[diag, diag]) / ref[diag, diag]).abs().max().item()
    assert rel < 1e-2, f"{provider}: diagonal (same-sign sums) off by {rel:.3g}"


@pytest.mark.parametrize("provider,M,truncates", [("torch", 16, True), ("torch", 128, True), ("triton", 128, True),
                                                  ("triton", 16, False), ("triton", 4096, True)])
def test_fast_accum_reaches_the_gemm(weights, provider, M, truncates):
    """fast_accum=True must change the GEMM's accumulation (not be dropped on the way): on the same-sign
    sums above, skipping the fp32 promotion loses visibly more than the precise mode, and stays finite.
    Triton's small-M kernel at M = 16 runs 16-row tiles on mma.sync (wgmma needs 64 rows), which
    accumulates in fp32 either way: there fast must equal precise."""
    if torch.version.hip or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("fast accumulation is an sm_90 (Hopper) tensor-core mode")
    w, wq, w_scale, _ = weights[4096, 6144]
    x = w[:M] * 50.0
    with use_kernels("torch"):
        xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
    ref, _ = reference(xq, x_scale, wq, w_scale, None)
    diag = torch.arange(M, device=DEV)
    errs = {}
    for fast in (False, True):
        with use_kernels(provider):
            out = torch.ops.rocm_attn.ptpc_scaled_mm(xq, x_scale, wq, w_scale, fast_accum=fast)
        errs[fast] = ((out.double()[diag, diag] - ref[diag, diag]) / ref[diag, diag]).abs().max().item()
    assert errs[False] < 1e-2, errs
    if truncates:
        assert 2 * errs[False] < errs[True] < 0.2, f"{provider}: precise {errs[False]:.3g}, fast {errs[True]:.3g}"
    else:
        assert errs[True] == errs[False], f"{provider}: precise {errs[False]:.3g}, fast {errs[True]:.3g}"



def test_compiled_launch_path_of_the_linear_kernels(weights, monkeypatch):
    """The quant kernel and the small-M GEMM (tuned configs) launch Triton's compiled kernel directly after
    the first call of a specialization (launch_cache.py). Fresh activations at every call: the quant stays bit
    for bit the torch reference's and the linear within the PTPC budget on the compiled path, across M (== 1,
    % 16, neither), K 4096 / 14336 (single-block and looping quant; split-K GEMM) and fast / precise
    accumulation (a None constexpr)."""
    from rocm_attn.kernels.triton_kernels import per_token_quant as quant_kernel
    from rocm_attn.kernels.triton_kernels import ptpc_gemm_small_m as small_m

    monkeypatch.setattr(quant_kernel, "_COMPILED", {})
    monkeypatch.setattr(small_m, "_COMPILED", {})
    for K, N in ((4096, 4096), (14336, 4096)):
        _, wq, w_scale, bias = weights[K, N]
        for M in (1, 5, 16, 64):
            for fast in (False, True):
                for rep in range(3):
                    x = activations(M, K, seed=100 * M + 10 * rep + fast)
                    with use_kernels("triton"):
                        xq, x_scale = torch.ops.rocm_attn.per_token_quant_fp8(x)
                        out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias, fast_accum=fast)
                    with use_kernels("torch"):
                        xq_ref, x_scale_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
                    assert torch.equal(xq.view(torch.uint8), xq_ref.view(torch.uint8)), (K, M, rep)
                    assert torch.equal(x_scale, x_scale_ref), (K, M, rep)
                    ref, mag = reference(xq_ref, x_scale_ref, wq, w_scale, bias)
                    if fast:  # random signs: truncated accumulation stays close here
                        assert rel_err(out, ref) < 1e-2, (K, M, rep)
                    else:
                        check_close(out, ref, mag, f"compiled launch K={K} M={M} rep={rep}")
    # kept: one quant kernel per (K's block, warps) and M trait; one GEMM per (shape, config, M trait, fast)
    assert 2 <= len(quant_kernel._COMPILED) <= 16
    assert 4 <= len(small_m._COMPILED) <= 32


@pytest.mark.parametrize("provider", PROVIDERS)
def test_eager_plans_equal_the_op(weights, provider):
    """ptpc_linear_eager (FP8Linear's eager calls) on every GEMM regime: the small-M kernel, cuBLASLt, the Gluon
    GEMM (M >= 1024), fast accumulation, leading dims; bit-identical to the op on fresh activations at every
    call, also on the calls that reuse the plan."""
    from rocm_attn.kernels import ptpc_linear as linear_module

    for K, N in ((4096, 6144), (14336, 4096)):
        _, wq, w_scale, bias = weights[K, N]
        for M in (1, 16, 128, 1100):
            for fast in (False, True):
                for rep in range(2):
                    x = activations(M, K, seed=7 * M + rep).reshape(1, M, K)
                    with use_kernels(provider), torch.no_grad():
                        got = linear_module.ptpc_linear_eager(x, wq, w_scale, bias, fast)
                        want = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias, fast_accum=fast)
                    assert got.shape == (1, M, N) and torch.equal(got, want), (provider, K, M, fast, rep)


@pytest.mark.parametrize("M", [1, 16, 64])
@pytest.mark.parametrize("split_k", [1, 3, 8])
def test_small_m_kernel_configs(weights, M, split_k):
    """Split-K settings of the small-M kernel (3: K = 14336 is no multiple of 3 * BLOCK_K, the
    masked path), twice in a row (the split-K counters must be back at zero after each call)."""
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch

    K, N = 14336, 4096
    _, wq, w_scale, bias = weights[K, N]
    _, xq, x_scale, ref, mag = case(weights, K, N, M)
    config = {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": split_k, "num_warps": 4, "num_stages": 3}
    for _ in range(2):
        out = ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, torch.bfloat16, config=config)
        check_close(out, ref, mag, f"small-M split_k={split_k} M={M}")


def test_small_m_split_k_two_streams(weights):
    """Split-K GEMMs on two streams at once: each stream has its own arrival counters (one
    shared set raced: a silent wrong answer)."""
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import ptpc_gemm_small_m_launch

    K, N, M = 14336, 4096, 16
    _, wq, w_scale, bias = weights[K, N]
    _, xq, x_scale, ref, mag = case(weights, K, N, M)
    config = {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 8, "num_warps": 4, "num_stages": 3}
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = [[], []]
    torch.cuda.synchronize()
    for _ in range(20):
        for s, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                outs[s].append(ptpc_gemm_small_m_launch(xq, x_scale, wq, w_scale, bias, torch.bfloat16,
                                                        config=config))
    torch.cuda.synchronize()
    for s in range(2):
        for out in outs[s]:
            check_close(out, ref, mag, f"small-M split-K on stream {s}")


@pytest.mark.parametrize("K,N", [(4096, 4096), (14336, 4096), (512, 1000)])  # TUNED (split-K 2 at 14336); autotuned
@pytest.mark.parametrize("M", [1, 7, 16, 64])
def test_small_m_pdl_pair_matches_two_plain_launches(weights, K, N, M):
    """ptpc_linear's small-M PDL pair (the quant calls launch_dependents, the small-M GEMM launched with
    launch_pdl waits for it): bit for bit the quant then the GEMM launched plainly, with and without bias and
    fast accumulation, eagerly and replayed from a CUDA graph on inputs rewritten after the capture (fresh
    randn each time). K = 512, N = 1000 is a shape TUNED does not list (the autotuned launch, no PDL)."""
    from rocm_attn.kernels.ptpc_linear import _pdl_small_m_linear
    from rocm_attn.kernels.triton_kernels.per_token_quant import per_token_quant_fp8_launch
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import pdl_capable, ptpc_gemm_small_m_launch

    if not pdl_capable(torch.device(DEV)):
        pytest.skip("PDL needs sm_90 or later")
    if (K, N) in weights:
        _, wq, w_scale, bias = weights[K, N]
    else:
        wq, w_scale = quantize_weight_per_channel(torch.randn(N, K, device=DEV, dtype=torch.bfloat16) * 0.05)
        bias = torch.randn(N, device=DEV, dtype=torch.bfloat16)
    for b, fast in ((None, False), (bias, False), (bias, True)):
        def plain(x):
            xq, xs = per_token_quant_fp8_launch(x, fp8_dtype(), fp8_max())
            return ptpc_gemm_small_m_launch(xq, xs, wq, w_scale, b, torch.bfloat16, fast_accum=fast)

        x = activations(M, K, seed=31 * M + fast)
        assert torch.equal(_pdl_small_m_linear(x, wq, w_scale, b, fast), plain(x)), (K, M, fast)
        graph = torch.cuda.CUDAGraph()
        _pdl_small_m_linear(x, wq, w_scale, b, fast)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            captured = _pdl_small_m_linear(x, wq, w_scale, b, fast)
        for rep in range(3):
            x.copy_(activations(M, K, seed=1000 + 31 * M + rep))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, plain(x)), (K, M, fast, rep)


def test_ptpc_linear_takes_the_small_m_pdl_pair(weights, monkeypatch):
    """On sm_90 the op (and an FP8Linear's eager plan) run the small-M PDL pair at M <= 64 where the GEMM is
    the small-M kernel, and give what ROCM_ATTN_PDL=0 gives; not at N = 28672, M = 64 (auto: cuBLASLt)."""
    from rocm_attn.kernels import ptpc_linear as linear_mod
    from rocm_attn.kernels.triton_kernels.ptpc_gemm_small_m import pdl_capable

    if not pdl_capable(torch.device(DEV)):
        pytest.skip("PDL needs sm_90 or later")
    _, wq, w_scale, bias = weights[4096, 4096]
    for M in (1, 16, 64):
        x = activations(M, 4096, seed=5 + M).reshape(1, M, 4096)
        assert linear_mod._pdl_pair(x.reshape(M, 4096), wq, torch.bfloat16, False) == "small_m"
        with torch.no_grad():
            y = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias)
            y_eager = linear_mod.ptpc_linear_eager(x, wq, w_scale, bias)
            monkeypatch.setenv("ROCM_ATTN_PDL", "0")
            assert linear_mod._pdl_pair(x.reshape(M, 4096), wq, torch.bfloat16, False) is None
            assert torch.equal(y, torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale, bias))
            assert torch.equal(y_eager, linear_mod.ptpc_linear_eager(x, wq, w_scale, bias))
            monkeypatch.delenv("ROCM_ATTN_PDL")
    _, wq_wide, _, _ = weights[4096, 28672]
    x = activations(64, 4096, seed=3)
    assert linear_mod._pdl_pair(x, wq_wide, torch.bfloat16, False) is None
    assert linear_mod._pdl_pair(x[:16], wq_wide, torch.bfloat16, False) == "small_m"


def test_ptpc_linear_leading_dims_odd_shapes():
    w = torch.randn(72, 200, device=DEV)  # K, N not multiples of 16: the fallbacks
    wq, w_scale = quantize_weight_per_channel(w)
    x = torch.randn(3, 7, 200, device=DEV, dtype=torch.bfloat16)
    with use_kernels("torch"):
        ref = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale).float()
    for provider in gpu_providers():
        with use_kernels(provider):
            out = torch.ops.rocm_attn.ptpc_linear(x, wq, w_scale)
        assert out.shape == (3, 7, 72), provider
        worst = (out.float() - ref).abs().max().item()
        assert worst <= 2e-2 * ref.abs().max().item(), f"{provider}: off by {worst:.3g}"
    for M in (0, 100):  # empty batch; the tiled GEMM at an odd M
        xm = torch.randn(M, 200, device=DEV, dtype=torch.float16)
        with use_kernels("triton"):
            out = torch.ops.rocm_attn.ptpc_linear(xm, wq, w_scale)
        with use_kernels("torch"):
            ref = torch.ops.rocm_attn.ptpc_linear(xm, wq, w_scale)
        assert out.shape == (M, 72)
        if M:
            atol = 2e-3 * ref.abs().max().item()
            torch.testing.assert_close(out.float(), ref.float(), rtol=2e-3, atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M,K", [(1, 4096), (4096, 4096), (1, 14336), (333, 14336), (1024, 16384), (8, 20000),
                                 (300, 20000)])
def test_per_token_quant_triton_exact(dtype, M, K):
    """Bit for bit the torch reference (IEEE division), single-block rows (K <= 16384) and two-pass ones, with
    the division's edge cases: -0, values whose quotient is far below fp8's range, a row with an inf (scale
    inf: zeros, and NaN at the inf) and one of small integers (quotients on fp8 rounding ties)."""
    x = torch.randn(M, K, device=DEV).to(dtype)
    x[0, 5] = 1000.0
    x[0, 6] = -0.0
    x[0, 7] = -1e-30 if dtype != torch.float16 else -1e-7
    if M > 2:
        x[2] = 0
    if M > 4:
        x[3, 9] = float("inf")
        x[4] = torch.randint(-448, 449, (K,), device=DEV).to(dtype)
    with use_kernels("torch"):
        q_ref, s_ref = torch.ops.rocm_attn.per_token_quant_fp8(x)
    with use_kernels("triton"):
        q, s = torch.ops.rocm_attn.per_token_quant_fp8(x)
    assert q.dtype == fp8_dtype()
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    nan, nan_ref = q.float().isnan(), q_ref.float().isnan()  # NaN's sign bit may differ between the casts
    assert torch.equal(nan, nan_ref) and int(nan.sum()) == (1 if M > 4 else 0)
    assert torch.equal(q.view(torch.uint8)[~nan], q_ref.view(torch.uint8)[~nan])


def _check_quant_close(q, s, q_ref, s_ref):
    """Triton vs torch fused quant: reduction order and rsqrt differ in the last bit, so a
    few elements may land one fp8 step away; scales agree to a bf16 rounding."""
    torch.testing.assert_close(s, s_ref, rtol=1e-2, atol=0)
    diff = (q.float() - q_ref.float()).abs() / q_ref.float().abs().clamp_min(2.0 ** -6)
    assert diff.max() <= 0.13 and (diff > 0).float().mean() < 0.02


@pytest.mark.parametrize("M", [1, 16, 4096])
def test_fused_quant_ops(M):
    K, N = 4096, 14336
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    r = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    w = (torch.rand(K, device=DEV) + 0.5).to(torch.bfloat16)
    gu = torch.randn(M, 2 * N, device=DEV, dtype=torch.bfloat16)
    results = {}
    for provider in ("torch", "triton"):
        with use_kernels(provider):
            results[provider] = (
                torch.ops.rocm_attn.rms_norm_quant_fp8(x, w, 1e-5),
                torch.ops.rocm_attn.fused_add_rms_norm_quant_fp8(x, r, w, 1e-5),
                torch.ops.rocm_attn.silu_mul_quant_fp8(gu),
            )
    (a1, a2, a3), (b1, b2, b3) = results["torch"], results["triton"]
    _check_quant_close(*b1, *a1)
    _check_quant_close(*b2[:2], *a2[:2])
    assert torch.equal(b2[2], a2[2])
    _check_quant_close(*b3, *a3)


@pytest.mark.parametrize("M", [1, 16, 1024, 4096])
@pytest.mark.parametrize("N", [14336, 12288])
def test_silu_mul_quant_persistent_and_two_operands(M, N):
    """Rows of Llama-3-8B / Qwen3-8B width take the persistent kernel (a scratch row per program, rows
    walked by a fixed grid; M >= 128) or silu*mul then per_token_quant_fp8 (fewer rows): bit-exact
    against the same math kept in one register block, for one gate_up tensor and for gate and up as
    two tensors; close to the torch provider."""
    from rocm_attn.kernels.triton_kernels.silu_mul_quant import silu_mul_quant_fp8_launch

    gu = torch.randn(M, 2 * N, device=DEV, dtype=torch.bfloat16) * 3
    gate, up = gu[:, :N].contiguous(), gu[:, N:].contiguous()
    q_one, s_one = silu_mul_quant_fp8_launch(gu, fp8_dtype(), fp8_max(), max_single_block=16384)
    for q, s in (silu_mul_quant_fp8_launch(gu, fp8_dtype(), fp8_max()),
                 torch.ops.rocm_attn.silu_mul_quant_fp8(gate, up)):
        assert torch.equal(s, s_one) and torch.equal(q.view(torch.uint8), q_one.view(torch.uint8))
    with use_kernels("torch"):
        q_ref, s_ref = torch.ops.rocm_attn.silu_mul_quant_fp8(gate, up)
    _check_quant_close(q_one, s_one, q_ref, s_ref)


def test_fp8_format_matches_platform():
    assert fp8_max() == float(torch.finfo(fp8_dtype()).max)
