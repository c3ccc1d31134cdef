"""reshape_and_cache and gather_cache: every provider, both layouts, vs element-by-element reads."""

import pytest
import torch

import rocm_attn
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.kv_cache import KVCache

PROVIDERS = ["torch", "triton"]


def read_token(cache: KVCache, slot: int):
    """(k, v) [Hkv, D] stored at ``slot``, read by the layout's element formula."""
    bs, x = cache.block_size, cache.x
    blk, off = slot // bs, slot % bs
    if cache.layout == "standard":
        return cache.k_cache[blk, off], cache.v_cache[blk, off]
    h, d = cache.num_kv_heads, cache.head_dim
    k = torch.empty(h, d, dtype=cache.dtype)
    v = torch.empty(h, d, dtype=cache.dtype)
    for hh in range(h):
        for dd in range(d):
            k[hh, dd] = cache.k_cache[blk, hh, dd // x, off, dd % x]
            v[hh, dd] = cache.v_cache[blk, hh, off // x, dd, off % x]
    return k, v


def dtypes_for(provider):
    # the Triton interpreter mishandles bf16 (REFERENCE.md): bf16 runs on the GPU tests
    return [torch.float32, torch.float16] + ([torch.bfloat16] if provider == "torch" else [])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_reshape_and_cache(provider, layout):
    for dtype in dtypes_for(provider):
        cache = KVCache(6, 16, 2, 32, dtype, layout)
        before_k, before_v = cache.k_cache.clone(), cache.v_cache.clone()
        slots = torch.tensor([5, 17, -1, 95, 16, 40, -3], dtype=torch.int64)
        k = torch.randn(7, 2, 32)  # fp32 input: the op casts to the cache dtype
        v = torch.randn(7, 2, 32)
        with use_kernels(provider):
            rocm_attn.reshape_and_cache(k, v, cache, slots)
        written = set()
        for t, s in enumerate(slots.tolist()):
            if s < 0:
                continue
            written.add(s)
            got_k, got_v = read_token(cache, s)
            assert torch.equal(got_k, k[t].to(dtype)) and torch.equal(got_v, v[t].to(dtype))
        # every other slot is untouched (skipped tokens wrote nothing)
        for s in [0, 1, 15, 18, 41, 94]:
            assert s not in written
            cache_before = KVCache(6, 16, 2, 32, dtype, layout)
            cache_before.k_cache.copy_(before_k)
            cache_before.v_cache.copy_(before_v)
            assert torch.equal(read_token(cache, s)[0], read_token(cache_before, s)[0])
            assert torch.equal(read_token(cache, s)[1], read_token(cache_before, s)[1])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_gather_cache(provider, layout):
    for dtype in dtypes_for(provider):
        bs = 8
        cache = KVCache(10, bs, 2, 16, dtype, layout)
        cache.k_cache.copy_(torch.randn(cache.k_cache.shape))
        cache.v_cache.copy_(torch.randn(cache.v_cache.shape))
        block_table = torch.tensor([[3, 7, 1, 0], [9, 0, 0, 0], [2, 5, 8, 6], [4, 0, 0, 0]], dtype=torch.int32)
        seq_starts = torch.tensor([5, 0, 9, 2], dtype=torch.int32)
        lens = [14, 0, 20, 1]  # an empty sequence, chunks crossing block edges
        cu = torch.tensor([0, 14, 14, 34, 35], dtype=torch.int32)
        w = 40  # workspace larger than needed: rows 35.. stay as they were
        k_out = torch.full((w, 2, 16), 7.0, dtype=dtype)
        v_out = torch.full((w, 2, 16), 7.0, dtype=dtype)
        with use_kernels(provider):
            torch.ops.rocm_attn.gather_cache(cache.k_cache, cache.v_cache, block_table, cu, seq_starts,
                                             k_out, v_out, layout)
        for b, n in enumerate(lens):
            for i in range(n):
                pos = int(seq_starts[b]) + i
                slot = int(block_table[b, pos // bs]) * bs + pos % bs
                want_k, want_v = read_token(cache, slot)
                row = int(cu[b]) + i
                assert torch.equal(k_out[row], want_k) and torch.equal(v_out[row], want_v), (b, i)
        assert (k_out[35:] == 7).all() and (v_out[35:] == 7).all()


def test_roundtrip_through_allocator():
    cache = KVCache(8, 16, 4, 64, torch.float32, "shuffled")
    slots = cache.allocator.allocate("s", 37)
    k, v = torch.randn(37, 4, 64), torch.randn(37, 4, 64)
    rocm_attn.reshape_and_cache(k, v, cache, slots)
    k_out, v_out = torch.empty_like(k), torch.empty_like(v)
    table = cache.allocator.block_table(["s"])
    rocm_attn.gather_cache(cache, table, torch.tensor([0, 37], dtype=torch.int32),
                           torch.tensor([0], dtype=torch.int32), k_out, v_out)
    assert torch.equal(k_out, k) and torch.equal(v_out, v)


def test_bad_inputs():
    cache = KVCache(4, 16, 2, 32, torch.float16)
    k = torch.randn(3, 2, 32, dtype=torch.float16)
    slots = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="layout"):
        torch.ops.rocm_attn.reshape_and_cache(k, k, cache.k_cache, cache.v_cache, slots, "paged")
    with pytest.raises(ValueError, match=r"\[\*, 2, 32\]"):
        rocm_attn.reshape_and_cache(torch.randn(3, 4, 32, dtype=torch.float16), k, cache, slots)
    with pytest.raises(ValueError, match="slot_mapping has 2 entries"):
        rocm_attn.reshape_and_cache(k, k, cache, slots[:2])
    with pytest.raises(TypeError, match="int32 or int64"):
        rocm_attn.reshape_and_cache(k, k, cache, slots.float())
    with pytest.raises(TypeError, match="KVCache"):
        rocm_attn.reshape_and_cache(k, k, cache.k_cache, slots)
    with pytest.raises(ValueError, match="shuffled layout needs"):
        torch.ops.rocm_attn.reshape_and_cache(k, k, cache.k_cache, cache.v_cache, slots, "shuffled")
    with pytest.raises(ValueError, match="cu_seq_lens needs 3"):
        torch.ops.rocm_attn.gather_cache(cache.k_cache, cache.v_cache, torch.zeros(2, 1, dtype=torch.int32),
                                         torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
                                         k, k.clone(), "standard")


def test_opcheck():
    cache = KVCache(4, 16, 2, 32, torch.float32)
    k, v = torch.randn(5, 2, 32), torch.randn(5, 2, 32)
    slots = torch.tensor([0, 3, -1, 40, 17])
    torch.library.opcheck(torch.ops.rocm_attn.reshape_and_cache.default,
                          (k, v, cache.k_cache, cache.v_cache, slots, "standard"))
    torch.library.opcheck(torch.ops.rocm_attn.gather_cache.default,
                          (cache.k_cache, cache.v_cache, torch.tensor([[1, 2]], dtype=torch.int32),
                           torch.tensor([0, 5], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
                           torch.empty(6, 2, 32), torch.empty(6, 2, 32), "standard"))
