"""Attention I on the GPU at real sizes (GQA 32/8, D = 128): every registered attention backend, both
KV layouts, bf16/fp16, vs the dense float64 reference; the cache ops and merge_attn_states, Triton vs
the torch reference. Run: pytest -x -q tests/gpu/test_attention_gpu.py (about 30-60 s on an H100)."""

import random

import pytest
import torch

import rocm_attn
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.kv_cache import KVCache
from rocm_attn.testing import make_mixed_batch, reference_attention, rel_err

pytestmark = pytest.mark.gpu
DEV = "cuda"
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 1e-5}


def registered_backends():
    info = rocm_attn.available_attention_backends()
    return [(name, layout) for name, i in info.items() if i["registered"] for layout in i["layouts"]]


def mixed_specs(seed):
    """A realistic step: decodes on long contexts, a prefill chunk, extends (chunked prefill / next turn),
    contexts on and just past block edges, in random order."""
    specs = [(0, 700), (1000, 1), (2048, 1), (777, 300), (4096, 1), (16, 1), (0, 1), (1500, 64),
             (33, 1), (256, 129), (4095, 1), (17, 2), (0, 33)]
    random.Random(seed).shuffle(specs)
    return specs


def check_backend(b, backend, window=None, softcap=None):
    try:
        out = rocm_attn.attention(b.q, b.k, b.v, b.kv_cache, b.query_start_loc, b.seq_lens, b.block_table,
                                  b.slot_mapping, scale=b.scale, backend=backend, sliding_window=window,
                                  softcap=softcap, metadata=b.metadata)
    except NotImplementedError as exc:
        pytest.skip(f"{backend}: {exc}")
    torch.cuda.synchronize()
    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, window, softcap)
    err = rel_err(out, ref)
    assert out.dtype == b.q.dtype and not out.isnan().any()
    assert err < TOL[b.q.dtype], f"{backend} {b.kv_cache.layout}: rel err {err:.2e}"
    return out


@pytest.mark.parametrize("backend, layout", registered_backends())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_mixed_batch(backend, layout, dtype):
    b = make_mixed_batch(mixed_specs(1), 8, 4, 128, 16, dtype, layout, DEV, seed=1)
    check_backend(b, backend)


@pytest.mark.parametrize("backend, layout", registered_backends())
def test_backend_variants(backend, layout):
    """GQA 1 and 8, D = 64, page 32; sliding window + softcap; decode-only and prefill-only."""
    rng = random.Random(2)
    b = make_mixed_batch(mixed_specs(2), 4, 1, 64, 32, torch.bfloat16, layout, DEV, seed=2)
    check_backend(b, backend)
    b = make_mixed_batch(mixed_specs(3), 2, 8, 64, 32, torch.float16, layout, DEV, seed=3)
    check_backend(b, backend, window=512, softcap=30.0)
    decodes = [(rng.randint(1, 8192), 1) for _ in range(24)]
    check_backend(make_mixed_batch(decodes, 8, 4, 128, 16, torch.bfloat16, layout, DEV, seed=4), backend)
    prefills = [(0, 2048), (0, 1000), (0, 17)]
    check_backend(make_mixed_batch(prefills, 8, 4, 128, 16, torch.bfloat16, layout, DEV, seed=5), backend)


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("split_kv", [False, True])
def test_unified_split_kv(layout, split_kv):
    from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch

    specs = [(16000, 1), (9000, 1), (1, 1), (4097, 1)]
    b = make_mixed_batch(specs, 8, 4, 128, 16, torch.bfloat16, layout, DEV, seed=6)
    rocm_attn.reshape_and_cache(b.k, b.v, b.kv_cache, b.slot_mapping)
    md = b.metadata
    out = unified_attention_launch(b.q, b.kv_cache.k_cache, b.kv_cache.v_cache, md.query_start_loc, md.seq_lens,
                                   md.block_table, b.scale, layout, 0, 0.0, md.max_query_len, md.max_seq_len,
                                   split_kv=split_kv)
    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale)
    assert rel_err(out, ref) < TOL[torch.bfloat16]


def test_unified_fp32_is_exact_fp32():
    """fp32 inputs take the IEEE tl.dot path (no TF32)."""
    b = make_mixed_batch(mixed_specs(7)[:6], 2, 4, 128, 16, torch.float32, "standard", DEV, seed=7)
    with use_kernels("triton"):
        check_backend(b, "TRITON_ATTN")


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_cache_ops_triton_vs_torch(layout):
    t, hkv, d, bs = 5000, 8, 128, 16
    caches = [KVCache(400, bs, hkv, d, torch.bfloat16, layout, DEV) for _ in range(2)]
    slots = torch.randperm(400 * bs, device=DEV)[:t]
    slots[::7] = -1
    k = torch.randn(t, hkv, d, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(t, hkv, d, device=DEV, dtype=torch.bfloat16)
    for cache, provider in zip(caches, ["torch", "triton"]):
        with use_kernels(provider):
            rocm_attn.reshape_and_cache(k, v, cache, slots)
    assert torch.equal(caches[0].k_cache, caches[1].k_cache) and torch.equal(caches[0].v_cache, caches[1].v_cache)
    table = torch.randint(0, 400, (6, 50), device=DEV, dtype=torch.int32)
    lens = torch.tensor([800, 0, 1, 333, 16, 640], device=DEV)
    cu = torch.zeros(7, dtype=torch.int32, device=DEV)
    cu[1:] = torch.cumsum(lens, 0)
    starts = torch.tensor([0, 5, 799, 100, 16, 0], dtype=torch.int32, device=DEV)
    outs = []
    for provider in ["torch", "triton"]:
        k_out = torch.zeros(2000, hkv, d, device=DEV, dtype=torch.bfloat16)
        v_out = torch.zeros_like(k_out)
        with use_kernels(provider):
            rocm_attn.gather_cache(caches[0], table, cu, starts, k_out, v_out)
        outs.append((k_out, v_out))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_merge_attn_states_triton_vs_torch():
    t, h, d = 3000, 32, 128
    p_out = torch.randn(t, h, d, device=DEV, dtype=torch.bfloat16)
    s_out = torch.randn(t, h, d, device=DEV, dtype=torch.bfloat16)
    p_lse = torch.randn(h, t, device=DEV) * 4
    s_lse = torch.randn(h, t, device=DEV) * 4
    p_lse[:, ::11] = float("inf")
    s_lse[:, ::13] = float("-inf")
    res = []
    for provider in ["torch", "triton"]:
        with use_kernels(provider):
            res.append(torch.ops.rocm_attn.merge_attn_states(p_out, p_lse, s_out, s_lse))
    assert rel_err(res[1][0], res[0][0]) < 5e-3
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-5, atol=1e-5)
