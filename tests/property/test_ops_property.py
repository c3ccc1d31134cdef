"""Property tests (hypothesis, issue 9 item 1): every op in torch.ops.rocm_attn, every provider that
runs here (torch; Triton under TRITON_INTERPRET=1 with tiny shapes), against a float64 reference
written here (or rocm_attn.testing's, which is independent of the kernels), on random shapes: odd
sizes, M = 0 / 1, K not a multiple of 16, GQA ratios, block sizes, contexts across block and
workspace-chunk boundaries, each supported dtype.

Budget: the "ci" profile (default, derandomized: the same examples every run) keeps CI fast;
ROCM_ATTN_HYPOTHESIS_PROFILE=nightly runs many more examples."""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocm_attn.kernels import fp8_dtype, fp8_max, use_kernels
from rocm_attn.kernels.split_attention import extend_workspace

import rocm_attn
from rocm_attn.testing import make_mixed_batch, make_mla_batch, reference_attention, rel_err

settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "nightly",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("ROCM_ATTN_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
# Triton under the interpreter is ~100x slower: 4 examples in CI, a third of the budget at night
TRITON_EXAMPLES = 4 if PROFILE == "ci" else settings.get_profile(PROFILE).max_examples // 3
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def dot_dtypes(provider):
    """Dtypes for ops whose Triton kernels use tl.dot: the interpreter (CPU, triton 3.9) returns garbage
    for bf16 tl.dot operands, so bf16 Triton attention is left to the GPU tests."""
    return [torch.float32, torch.float16] if provider == "triton" and INTERPRETED else DTYPES


ops = torch.ops.rocm_attn
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}  # rel. error of attention outputs
PROVIDERS = ["torch", "triton"]


def budget(provider):
    """Decorator: the profile's example budget, smaller for Triton (interpreted on CPU)."""
    n = settings.get_profile(PROFILE).max_examples
    return settings(max_examples=TRITON_EXAMPLES if provider == "triton" else n)


def tensor(data, *shape, dtype=torch.float32, scale=1.0):
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def rows_cols(data, max_m=9, max_k=40):
    m = data.draw(st.sampled_from([0, 1]) | st.integers(2, max_m), label="M")
    k = data.draw(st.sampled_from([1, 15, 17, 33]) | st.integers(1, max_k), label="K")
    return m, k


# ---------------------------------------------------------------- FP8 quantization


def fp8_bound(ref, scale):
    """How far a dequantized e4m3 value may be from ``ref``: half an ulp (3 mantissa bits: 2^-4
    relative) plus the subnormal spacing (2^-9 of the scale), with a little slack."""
    return ref.abs() * 2.0**-4 * 1.01 + scale.double() * 2.0**-9 + 1e-12


def interpreter_carry(ref, scale):
    """Elements the Triton interpreter (CPU, triton 3.9) converts to e4m3 wrongly: where rounding up
    carries into the next power of two (126.1 -> 64 instead of 128, 1.97 -> 1 instead of 2). GPUs
    convert in hardware and are not affected; on CPU those elements are left out of the checks: every
    element whose value rounds to a power of two (from either side, as the kernel's own intermediate
    roundings, also truncated by the interpreter, may put it just below)."""
    rounded = (ref / scale.double()).float().to(fp8_dtype()).double()
    return torch.frexp(rounded)[0].abs() == 0.5


def check_quant(xq, scale, ref, name, provider="torch"):
    """xq * scale approximates ref (float64) within e4m3 rounding, row by row; scale = rowmax / fp8_max."""
    fmax = fp8_max()
    assert xq.dtype == fp8_dtype() and scale.dtype == torch.float32 and scale.shape == (*ref.shape[:-1], 1)
    if ref.numel() == 0:
        return
    deq = xq.double() * scale.double()
    ok = (deq - ref).abs().le(fp8_bound(ref, scale))
    if provider == "triton" and INTERPRETED:
        ok |= interpreter_carry(ref, scale)
    assert ok.all(), f"{name}: dequantized values off"
    amax = ref.abs().amax(-1, keepdim=True)
    want = (amax / fmax).clamp_min(1.0 / (fmax * 512))
    assert torch.allclose(scale.double(), want, rtol=2e-6, atol=0), f"{name}: scale is not rowmax / fp8_max"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_per_token_quant_fp8(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        m, k = rows_cols(data)
        dtype = data.draw(st.sampled_from(DTYPES))
        lead = data.draw(st.sampled_from([(m,), (1, m), (2, m)]))
        x = tensor(data, *lead, k, dtype=dtype, scale=data.draw(st.sampled_from([1e-3, 1.0, 300.0])))
        if m and data.draw(st.booleans()):
            x[..., 0, :] = 0  # an all-zero row: the floor scale, xq = 0
        with use_kernels(provider):
            xq, scale = ops.per_token_quant_fp8(x)
        check_quant(xq, scale, x.double(), "per_token_quant_fp8", provider)
        ref_q, ref_s = ops.per_token_quant_fp8(x)  # the torch reference: identical bits (one formula)
        same = xq.view(torch.uint8) == ref_q.view(torch.uint8)
        if provider == "triton" and INTERPRETED:
            same |= interpreter_carry(x.double(), scale)
        assert torch.equal(scale, ref_s) and same.all()

    run()


def quantized_weight(data, n, k, dtype=torch.float32):
    w = tensor(data, n, k, dtype=dtype, scale=0.2)
    wq, ws = rocm_attn.quantize_weight_per_channel(w)
    check_quant(wq, ws, w.double(), "quantize_weight_per_channel")
    return wq, ws


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ptpc_scaled_mm(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        m, k = rows_cols(data, max_m=70)  # past the small-M kernel's 64 rows
        if provider == "triton" and m > 8:
            m = data.draw(st.sampled_from([65, 66]))  # one tiled-GEMM case, no more (interpreter)
        n = data.draw(st.integers(1, 24), label="N")
        out_dtype = data.draw(st.sampled_from(DTYPES))
        xq, xs = ops.per_token_quant_fp8(tensor(data, m, k))
        wq, ws = quantized_weight(data, n, k)
        bias = tensor(data, n, dtype=out_dtype) if data.draw(st.booleans()) else None
        with use_kernels(provider):
            out = ops.ptpc_scaled_mm(xq, xs, wq, ws, bias, out_dtype)
        ref = (xq.double() @ wq.double().t()) * xs.double() * ws.double().t()
        ref = ref + (bias.double() if bias is not None else 0)
        assert out.shape == (m, n) and out.dtype == out_dtype
        # fp8 products are exact and the sum is fp32: the error is the output rounding + fp32 sums
        eps = torch.finfo(out_dtype).eps
        terms = (xq.double().abs() @ wq.double().abs().t()) * xs.double() * ws.double().t()
        assert ((out.double() - ref).abs() <= ref.abs() * eps + terms * 1e-6 + 1e-30).all()

    run()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ptpc_linear_and_per_tensor(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        m, k = rows_cols(data)
        n = data.draw(st.integers(1, 20), label="N")
        dtype = data.draw(st.sampled_from(DTYPES))
        x = tensor(data, 2, m, k, dtype=dtype)
        w = tensor(data, n, k, scale=0.2)
        wq, ws = rocm_attn.quantize_weight_per_channel(w)
        with use_kernels(provider):
            out = ops.ptpc_linear(x, wq, ws)
            xq, xs = ops.per_token_quant_fp8(x)  # the provider's own quantization of x
        # checked against float64, then the GEMM of those fp8 values in float64
        check_quant(xq, xs, x.double(), "ptpc_linear's activation quant", provider)
        ref = (xq.double() @ wq.double().t()) * xs.double() * ws.double().t()
        assert out.shape == (2, m, n) and out.dtype == dtype
        assert rel_err(out, ref) < 2 * torch.finfo(dtype).eps + 1e-6
        # per-tensor FP8 (torch only): one scale for all of x and one for w
        wq_t, ws_t = rocm_attn.quantize_weight_per_tensor(w)
        out_t = ops.fp8_per_tensor_linear(x, wq_t, ws_t)
        assert out_t.shape == (2, m, n)
        if m:
            ref_t = x.double() @ w.double().t()
            assert rel_err(out_t, ref_t) < 0.15  # two e4m3 roundings with a shared scale

    run()


def rms_norm64(x, weight, eps):
    h = x.double()
    return weight.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fused_norm_and_silu_quant(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        m, k = rows_cols(data)
        dtype = data.draw(st.sampled_from(DTYPES))
        x = tensor(data, m, k, dtype=dtype)
        res = tensor(data, m, k, dtype=dtype)
        weight = (1 + tensor(data, k) / 4).to(dtype)
        with use_kernels(provider):
            xq, xs = ops.rms_norm_quant_fp8(x, weight, 1e-6)
            xq2, xs2, r_out = ops.fused_add_rms_norm_quant_fp8(x, res, weight, 1e-6)
            yq, ys = ops.silu_mul_quant_fp8(torch.cat([x, res], -1))
        # HF rounds the normed row to x's dtype before the weight multiply: allow that one rounding
        slack = torch.finfo(dtype).eps
        for q, s, ref, name in (
            (xq, xs, rms_norm64(x, weight, 1e-6), "rms_norm_quant_fp8"),
            (xq2, xs2, rms_norm64(r_out, weight, 1e-6), "fused_add_rms_norm_quant_fp8"),
            (ys.new_empty(0), ys, None, "silu_mul_quant_fp8"),
        ):
            if ref is None:
                ref = torch.nn.functional.silu(x.double()) * res.double()
                q = yq
            deq = q.double() * s.double()
            ok = (deq - ref).abs() <= fp8_bound(ref, s) * (1 + 2 * slack) + ref.abs() * 4 * slack
            if provider == "triton" and INTERPRETED:
                ok |= interpreter_carry(ref, s)
            assert ok.all(), name
        want = (x + res).to(dtype)
        if provider == "triton" and INTERPRETED and dtype == torch.bfloat16:
            # the interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest): one ulp
            assert torch.allclose(r_out.float(), want.float(), rtol=2.0**-7, atol=0)
        else:
            assert torch.equal(r_out, want)

    run()


# ---------------------------------------------------------------- cache ops


def cache_case(data, dtype):
    layout = data.draw(st.sampled_from(["standard", "shuffled"]))
    x = 16 // torch.empty((), dtype=dtype).element_size()
    bs = data.draw(st.sampled_from([x, 2 * x] if layout == "shuffled" else [1, 3, 4, 16]))
    d = data.draw(st.sampled_from([x, 2 * x, 4 * x] if layout == "shuffled" else [1, 5, 8, 24]))
    hkv = data.draw(st.integers(1, 3))
    nb = data.draw(st.integers(1, 6))
    return rocm_attn.KVCache(nb, bs, hkv, d, dtype, layout)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reshape_and_cache_then_gather(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(DTYPES))
        cache = cache_case(data, dtype)
        n_slots = cache.num_blocks * cache.block_size
        t = data.draw(st.integers(0, min(n_slots, 12)), label="T")
        slots = data.draw(st.permutations(range(n_slots)))[:t]
        skip = data.draw(st.lists(st.booleans(), min_size=t, max_size=t))
        slot_mapping = [-1 if s else v for s, v in zip(skip, slots, strict=True)]
        slot_mapping = torch.tensor(slot_mapping, dtype=torch.int64)
        k = tensor(data, t, cache.num_kv_heads, cache.head_dim, dtype=dtype)
        v = tensor(data, t, cache.num_kv_heads, cache.head_dim, dtype=dtype)
        with use_kernels(provider):
            ops.reshape_and_cache(k, v, cache.k_cache, cache.v_cache, slot_mapping, cache.layout)
        k_std, v_std = cache.dense()
        flat_k = k_std.reshape(n_slots, cache.num_kv_heads, cache.head_dim)
        flat_v = v_std.reshape(n_slots, cache.num_kv_heads, cache.head_dim)
        written = set()
        for i, s in enumerate(slot_mapping.tolist()):  # a plain loop: the reference
            if s >= 0:
                written.add(s)
                assert torch.equal(flat_k[s], k[i]) and torch.equal(flat_v[s], v[i])
        untouched = [s for s in range(n_slots) if s not in written]
        assert not flat_k[untouched].any() and not flat_v[untouched].any()
        # gather random chunks of "sequences" made of random block lists back out
        b = data.draw(st.integers(1, 3))
        width = data.draw(st.integers(1, cache.num_blocks))
        table = torch.tensor(
            [
                data.draw(st.lists(st.integers(0, cache.num_blocks - 1), min_size=width, max_size=width))
                for _ in range(b)
            ],
            dtype=torch.int32,
        )
        starts, lens = [], []
        for _ in range(b):
            start = data.draw(st.integers(0, width * cache.block_size))
            starts.append(start)
            lens.append(data.draw(st.integers(0, width * cache.block_size - start)))
        cu = torch.tensor([0] + [sum(lens[: i + 1]) for i in range(b)], dtype=torch.int32)
        k_out = torch.zeros(int(cu[-1]), cache.num_kv_heads, cache.head_dim, dtype=dtype)
        v_out = torch.zeros_like(k_out)
        with use_kernels(provider):
            ops.gather_cache(
                cache.k_cache,
                cache.v_cache,
                table,
                cu,
                torch.tensor(starts, dtype=torch.int32),
                k_out,
                v_out,
                cache.layout,
            )
        row = 0
        for i in range(b):
            for p in range(starts[i], starts[i] + lens[i]):
                slot = int(table[i, p // cache.block_size]) * cache.block_size + p % cache.block_size
                assert torch.equal(k_out[row], flat_k[slot]) and torch.equal(v_out[row], flat_v[slot])
                row += 1

    run()


# ---------------------------------------------------------------- attention ops


def attend64(q, k, v, scale, causal, window, softcap, q_pos0, mask=None):
    """One sequence in float64. q [Lq,Hq,D], k/v [Lk,Hkv,D*]; query i at position q_pos0 + i.
    -> (out [Lq,Hq,Dv], lse [Hq,Lq]); a row that sees no key gives 0 and -inf."""
    group = q.shape[1] // k.shape[1]
    kk, vv = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    s = torch.einsum("qhd,khd->hqk", q.double(), kk) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    diff = (q_pos0 + torch.arange(q.shape[0]))[:, None] - torch.arange(k.shape[0])[None, :]
    visible = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        visible &= diff >= 0
    if window:
        visible &= diff < window
    if mask is not None:
        visible = visible & mask
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, vv), lse


def lens_strategy(data, n, lo=0, hi=9):
    return [data.draw(st.integers(lo, hi)) for _ in range(n)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_flash_attn_varlen(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(dot_dtypes(provider)))
        hkv = data.draw(st.integers(1, 2))
        group = data.draw(st.sampled_from([1, 2, 3, 4]))
        d = data.draw(st.sampled_from([8, 16, 24] if provider == "triton" else [1, 8, 20, 64]))
        dv = data.draw(st.sampled_from([d, 8]))
        b = data.draw(st.integers(1, 3))
        lq = lens_strategy(data, b, 0, 7)
        causal = data.draw(st.booleans())
        lk = [q + data.draw(st.integers(0, 6)) for q in lq]  # bottom-right causal needs Lk >= Lq
        window = data.draw(st.sampled_from([0, 0, 1, 3]))
        softcap = data.draw(st.sampled_from([0.0, 0.0, 2.5]))
        scale = data.draw(st.sampled_from([1 / math.sqrt(d), 0.7]))
        q = tensor(data, sum(lq), hkv * group, d, dtype=dtype)
        k = tensor(data, sum(lk), hkv, d, dtype=dtype)
        v = tensor(data, sum(lk), hkv, dv, dtype=dtype)
        cq = torch.tensor([0] + [sum(lq[: i + 1]) for i in range(b)], dtype=torch.int32)
        ck = torch.tensor([0] + [sum(lk[: i + 1]) for i in range(b)], dtype=torch.int32)
        with use_kernels(provider):
            out, lse = ops.flash_attn_varlen(
                q, k, v, cq, ck, max(lq), max(lk), scale, causal, window, softcap
            )
        refs, lses = [], []
        for i in range(b):
            o, l = attend64(
                q[cq[i] : cq[i + 1]],
                k[ck[i] : ck[i + 1]],
                v[ck[i] : ck[i + 1]],
                scale,
                causal,
                window,
                softcap,
                lk[i] - lq[i],
            )
            refs.append(o)
            lses.append(l)
        ref, ref_lse = torch.cat(refs), torch.cat(lses, dim=1)
        assert out.shape == (sum(lq), hkv * group, dv) and lse.shape == (hkv * group, sum(lq))
        assert rel_err(out, ref) < TOL[dtype] * 2
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), finite) and not out[~finite.t()].any()
        assert torch.allclose(lse[finite].double(), ref_lse[finite], atol=TOL[dtype] * 20)

    run()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_flash_attention_dense(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(dot_dtypes(provider)))
        b, hkv, group = (
            data.draw(st.integers(1, 2)),
            data.draw(st.integers(1, 2)),
            data.draw(st.sampled_from([1, 2, 4])),
        )
        sq = data.draw(st.integers(1, 7))
        sk = sq + data.draw(st.integers(0, 5))
        d = data.draw(st.sampled_from([8, 16, 32]))
        causal = data.draw(st.booleans())
        q = tensor(data, b, hkv * group, sq, d, dtype=dtype)
        k = tensor(data, b, hkv, sk, d, dtype=dtype)
        v = tensor(data, b, hkv, sk, d, dtype=dtype)
        kind = data.draw(st.sampled_from(["none", "bool", "float"]))
        mask = None
        if kind != "none":
            keep = tensor(data, b, 1, 1, sk) > -0.5  # padding-like [B,1,1,Sk]
            mask = (
                keep
                if kind == "bool"
                else torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))
            )
        scale = 1 / math.sqrt(d)
        with use_kernels(provider):
            out = ops.flash_attention(q, k, v, mask, scale, causal)
        for i in range(b):
            m = None if mask is None else (mask[i, 0] if kind == "bool" else mask[i, 0] == 0).expand(sq, sk)
            ref, _ = attend64(
                q[i].transpose(0, 1),
                k[i].transpose(0, 1),
                v[i].transpose(0, 1),
                scale,
                causal,
                0,
                0.0,
                sk - sq,
                m,
            )
            assert rel_err(out[i].transpose(0, 1), ref) < TOL[dtype] * 2

    run()


def mixed_specs(data, bs, kinds, max_ctx):
    """(context, query) per sequence; contexts often sit on, just before or just after a block edge."""
    specs = []
    for kind in kinds:
        edge = bs * data.draw(st.integers(0, max(1, max_ctx // bs)))
        ctx = max(0, min(max_ctx, edge + data.draw(st.sampled_from([-1, 0, 1, 2]))))
        if kind == "decode":
            specs.append((ctx, 1))
        elif kind == "prefill":
            specs.append((0, data.draw(st.integers(2, 9))))
        else:
            specs.append((max(ctx, 1), data.draw(st.integers(2, 9))))
    return specs


def batch_case(data, provider, kinds_pool=("decode", "extend", "prefill")):
    dtype = data.draw(st.sampled_from(dot_dtypes(provider)))
    layout = data.draw(st.sampled_from(["standard", "shuffled"]))
    x = 16 // torch.empty((), dtype=dtype).element_size()
    bs = data.draw(st.sampled_from([x, 2 * x] if layout == "shuffled" else [1, 2, 5, 16]))
    d = data.draw(st.sampled_from([x, 2 * x] if layout == "shuffled" else [4, 8, 16]))
    hkv, group = data.draw(st.integers(1, 2)), data.draw(st.sampled_from([1, 2, 3, 4]))
    n = data.draw(st.integers(1, 3 if provider == "triton" else 5))
    kinds = [data.draw(st.sampled_from(kinds_pool)) for _ in range(n)]
    specs = mixed_specs(data, bs, kinds, max_ctx=24 if provider == "triton" else 40)
    seed = data.draw(st.integers(0, 2**16))
    return make_mixed_batch(specs, hkv, group, d, bs, dtype, layout, seed=seed)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_paged_decode(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        b = batch_case(data, provider, ("decode",))
        c = b.kv_cache
        ops.reshape_and_cache(b.k, b.v, c.k_cache, c.v_cache, b.slot_mapping, c.layout)
        window = data.draw(st.sampled_from([0, 0, 2, 5]))
        softcap = data.draw(st.sampled_from([0.0, 0.0, 3.0]))
        with use_kernels(provider):
            out = ops.paged_decode(
                b.q, c.k_cache, c.v_cache, b.seq_lens, b.block_table, b.scale, c.layout, window, softcap
            )
        ref = reference_attention(
            b.q, b.k_full, b.v_full, b.query_lens, b.scale, window or None, softcap or None
        )
        assert rel_err(out, ref) < TOL[b.q.dtype] * 2

    run()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unified_attention(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        b = batch_case(data, provider)
        c = b.kv_cache
        ops.reshape_and_cache(b.k, b.v, c.k_cache, c.v_cache, b.slot_mapping, c.layout)
        window = data.draw(st.sampled_from([0, 0, 3]))
        softcap = data.draw(st.sampled_from([0.0, 0.0, 4.0]))
        md = b.metadata
        with use_kernels(provider):
            out = ops.unified_attention(
                b.q,
                c.k_cache,
                c.v_cache,
                b.query_start_loc,
                b.seq_lens,
                b.block_table,
                b.scale,
                c.layout,
                window,
                softcap,
                md.max_query_len,
                md.max_seq_len,
            )
        ref = reference_attention(
            b.q, b.k_full, b.v_full, b.query_lens, b.scale, window or None, softcap or None
        )
        assert rel_err(out, ref) < TOL[b.q.dtype] * 2

    run()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_attention_entry_all_backends(provider):
    """rocm_attn.attention (writes the cache, then the backend) with a small extend workspace, so
    contexts cross workspace-chunk boundaries as well as block boundaries."""

    @budget(provider)
    @given(data=st.data())
    def run(data):
        b = batch_case(data, provider)
        layout = b.kv_cache.layout
        backend = data.draw(
            st.sampled_from(
                [
                    "TRITON_ATTN",
                    "ROCM_AITER_UNIFIED_ATTN",
                    "ROCM_AITER_FA" if layout == "shuffled" else "ROCM_ATTN",
                ]
            )
        )
        window = data.draw(st.sampled_from([None, None, 4]))
        workspace = data.draw(st.sampled_from([1, 7, 16, 32768]))
        with use_kernels(provider), extend_workspace(workspace):
            out = rocm_attn.attention(
                b.q,
                b.k,
                b.v,
                b.kv_cache,
                b.query_start_loc,
                b.seq_lens,
                b.block_table,
                b.slot_mapping,
                scale=b.scale,
                backend=backend,
                sliding_window=window,
            )
        ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, window)
        assert rel_err(out, ref) < TOL[b.q.dtype] * 2

    run()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_merge_attn_states(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(DTYPES))
        t, h, d = (
            data.draw(st.integers(0, 6)),
            data.draw(st.integers(1, 3)),
            data.draw(st.sampled_from([1, 8, 13])),
        )
        po, so = tensor(data, t, h, d, dtype=dtype), tensor(data, t, h, d, dtype=dtype)
        pl, sl = tensor(data, h, t, scale=3.0), tensor(data, h, t, scale=3.0)
        if t:  # empty chunks: -inf (and +inf, which some kernels write) on either side or both
            pl[:, 0], sl[:, 0] = float("-inf"), float("inf")
            pl[:, -1] = float("inf")
        with use_kernels(provider):
            out, lse = ops.merge_attn_states(po, pl, so, sl)
        p = pl.double().masked_fill(pl == float("inf"), float("-inf"))
        s = sl.double().masked_fill(sl == float("inf"), float("-inf"))
        ref_lse = torch.logaddexp(p, s)
        wp = torch.exp(p - ref_lse).nan_to_num(0.0).t()[..., None]
        ws = torch.exp(s - ref_lse).nan_to_num(0.0).t()[..., None]
        ref = wp * po.double() + ws * so.double()
        assert rel_err(out, ref) < TOL[dtype] and out.shape == po.shape
        assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_lse))
        fin = torch.isfinite(ref_lse)
        assert torch.allclose(lse[fin].double(), ref_lse[fin], atol=1e-5)

    run()


# ---------------------------------------------------------------- MLA


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mla_cache_ops_and_decode(provider):
    @budget(provider)
    @given(data=st.data())
    def run(data):
        dtype = data.draw(st.sampled_from(dot_dtypes(provider)))
        bs = data.draw(st.sampled_from([1, 4, 16]))
        lora, rope = data.draw(st.sampled_from([8, 16])), data.draw(st.sampled_from([4, 8]))
        heads = data.draw(st.integers(1, 3))
        specs = mixed_specs(data, bs, ["decode"] * data.draw(st.integers(1, 3)), max_ctx=20)
        m = make_mla_batch(
            specs,
            heads,
            kv_lora_rank=lora,
            rope_dim=rope,
            nope_dim=8,
            v_dim=8,
            block_size=bs,
            dtype=dtype,
            seed=data.draw(st.integers(0, 999)),
        )
        md, cache = m.metadata, m.mla_cache.latent_cache
        with use_kernels(provider):
            ops.mla_reshape_and_cache(m.kv_c, m.k_pe, cache, md.slot_mapping)
        # every sequence's latents read back through the block table = its history
        cu = torch.tensor(
            [0] + [sum(len(x) for x in m.latents[: i + 1]) for i in range(len(m.latents))], dtype=torch.int32
        )
        out = torch.zeros(int(cu[-1]), lora + rope, dtype=dtype)
        with use_kernels(provider):
            ops.mla_gather_cache(cache, md.block_table, cu, torch.zeros(len(specs), dtype=torch.int32), out)
        assert torch.equal(out, torch.cat(m.latents))
        # absorbed decode: every head attends over the latent rows (keys = rows, values = first L columns)
        q = tensor(data, len(specs), heads, lora + rope, dtype=dtype)
        with use_kernels(provider):
            o, lse = ops.mla_decode(q, cache, md.seq_lens, md.block_table, m.scale, lora)
        for i, lat in enumerate(m.latents):
            ref, ref_lse = attend64(
                q[i : i + 1], lat[:, None], lat[:, None, :lora], m.scale, False, 0, 0.0, 0
            )
            assert rel_err(o[i : i + 1], ref) < TOL[dtype] * 2
            assert torch.allclose(lse[:, i].double(), ref_lse[:, 0], atol=TOL[dtype] * 20)

    run()


@given(data=st.data())
def test_mla_attention_dense(data):
    """mla_attention_dense (no providers: torch ops, absorbed at Sq <= 16 else up-projected) vs float64."""
    dtype = data.draw(st.sampled_from(DTYPES))
    b, h = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    sq = data.draw(st.sampled_from([1, 3, 17]))
    sk = sq + data.draw(st.integers(0, 4))
    p, lora, rope, vd = 8, 16, 4, 8
    q = tensor(data, b, h, sq, p + rope, dtype=dtype)
    kv_c, k_pe = tensor(data, b, 1, sk, lora, dtype=dtype), tensor(data, b, 1, sk, rope, dtype=dtype)
    w_uk, w_uv_t = (
        tensor(data, h, p, lora, dtype=dtype, scale=0.25),
        tensor(data, h, lora, vd, dtype=dtype, scale=0.25),
    )
    causal = data.draw(st.booleans())
    scale = 1 / math.sqrt(p + rope)
    out = ops.mla_attention_dense(q, kv_c, k_pe, w_uk, w_uv_t, None, scale, causal)
    for i in range(b):
        k = torch.cat(
            [
                torch.einsum("sl,hpl->shp", kv_c[i, 0].double(), w_uk.double()),
                k_pe[i, 0].double()[:, None].expand(sk, h, rope),
            ],
            -1,
        )
        v = torch.einsum("sl,hlv->shv", kv_c[i, 0].double(), w_uv_t.double())
        ref, _ = attend64(q[i].transpose(0, 1), k, v, scale, causal, 0, 0.0, sk - sq)
        assert rel_err(out[i].transpose(0, 1), ref) < TOL[dtype] * 4


def test_every_op_has_a_property_test():
    """A new op must get a property test here."""
    covered = {
        "per_token_quant_fp8",
        "ptpc_scaled_mm",
        "ptpc_linear",
        "fp8_per_tensor_linear",
        "rms_norm_quant_fp8",
        "fused_add_rms_norm_quant_fp8",
        "silu_mul_quant_fp8",
        "reshape_and_cache",
        "gather_cache",
        "merge_attn_states",
        "flash_attn_varlen",
        "flash_attention",
        "paged_decode",
        "unified_attention",
        "mla_reshape_and_cache",
        "mla_gather_cache",
        "mla_decode",
        "mla_attention_dense",
    }
    from rocm_attn.kernels.registry import registered_ops

    registered = set(registered_ops()) | {"mla_attention_dense"}  # the kernels' ops (rocm_attn/ adds HF glue)
    assert registered <= covered, f"ops without a property test: {sorted(registered - covered)}"
