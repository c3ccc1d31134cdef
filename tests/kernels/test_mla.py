"""MLA latent-cache ops: mla_decode (torch + Triton under the interpreter) vs a dense float64 reference,
mla_reshape_and_cache / mla_gather_cache round trips, fakes (opcheck), bad input."""

import random

import pytest
import torch

import rocm_attn  # noqa: F401  (registers the ops)
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.mla import MLACache
from rocm_attn.testing import rel_err

PROVIDERS = ["torch", "triton"]


def make_cache(seq_lens, L, R, block_size, dtype=torch.float32, seed=0):
    """A latent cache with each sequence's rows at random (shuffled) blocks; returns the dense rows too."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in seq_lens]
    nb = sum(need) + 2
    cache = MLACache(nb, block_size, L, R, dtype)
    cache.latent_cache.normal_(generator=gen)  # garbage everywhere else: must never be read
    ids = list(range(nb))
    random.Random(seed).shuffle(ids)
    width = max(max(need), 1)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    dense = []
    for b, (n, k) in enumerate(zip(seq_lens, need)):
        blocks, ids = ids[:k], ids[k:]
        table[b, :k] = torch.tensor(blocks, dtype=torch.int32)
        rows = torch.randn(n, L + R, generator=gen).to(dtype)
        for p in range(n):
            cache.latent_cache[blocks[p // block_size], p % block_size] = rows[p]
        dense.append(rows)
    return cache, table, dense


def reference_decode(q, dense, scale, L):
    """float64 MQA of each sequence's one query (all heads) over its latent rows."""
    outs, lses = [], []
    for b, rows in enumerate(dense):
        if rows.shape[0] == 0:
            outs.append(torch.zeros(q.shape[1], L, dtype=torch.float64))
            lses.append(torch.full((q.shape[1],), float("-inf"), dtype=torch.float64))
            continue
        s = q[b].double() @ rows.double().t() * scale  # [H, n]
        outs.append(torch.softmax(s, -1) @ rows.double()[:, :L])
        lses.append(torch.logsumexp(s, -1))
    return torch.stack(outs), torch.stack(lses, dim=1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("heads, L, R, block_size, seq_lens", [
    (16, 32, 16, 16, [1, 16, 17, 40]),      # block boundaries, several tiles per split
    (4, 32, 16, 8, [23, 0, 8, 3]),           # fewer heads than the 16-head tile; an empty sequence
    (20, 24, 8, 16, [33, 5]),                # L, R not powers of two; heads past one tile
])
def test_mla_decode_matches_reference(provider, heads, L, R, block_size, seq_lens):
    cache, table, dense = make_cache(seq_lens, L, R, block_size)
    q = torch.randn(len(seq_lens), heads, L + R)
    scale = 0.3
    with use_kernels(provider):
        out, lse = torch.ops.rocm_attn.mla_decode(q, cache.latent_cache, torch.tensor(seq_lens, dtype=torch.int32),
                                                  table, scale, L)
    ref, ref_lse = reference_decode(q, dense, scale, L)
    assert out.shape == (len(seq_lens), heads, L) and lse.shape == (heads, len(seq_lens))
    assert rel_err(out, ref) < 1e-5
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    assert (lse[~finite] == float("-inf")).all() and (out[[i for i, n in enumerate(seq_lens) if n == 0]] == 0).all()


def test_mla_decode_without_lse():
    cache, table, dense = make_cache([6, 9], 16, 8, 4)
    q = torch.randn(2, 4, 24)
    out, lse = torch.ops.rocm_attn.mla_decode(q, cache.latent_cache, torch.tensor([6, 9]), table, 0.5, 16, False)
    assert lse.shape == (4, 0) and rel_err(out, reference_decode(q, dense, 0.5, 16)[0]) < 1e-5
    torch.library.opcheck(torch.ops.rocm_attn.mla_decode.default,
                          (q, cache.latent_cache, torch.tensor([6, 9]), table, 0.5, 16, False))


def test_mla_decode_triton_single_split_path():
    """num_splits == 1 writes the output straight from stage 1 (no reduce)."""
    from rocm_attn.kernels.triton_kernels.mla_decode import mla_decode_launch

    cache, table, dense = make_cache([19, 7], 32, 16, 8, seed=3)
    q = torch.randn(2, 16, 48)
    out, lse = mla_decode_launch(q, cache.latent_cache, torch.tensor([19, 7], dtype=torch.int32), table, 0.2, 32,
                                 num_splits=1)
    ref, ref_lse = reference_decode(q, dense, 0.2, 32)
    assert rel_err(out, ref) < 1e-5
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-5)


def test_mla_decode_fp16_triton():
    cache, table, dense = make_cache([20, 9], 32, 16, 16, dtype=torch.float16, seed=1)
    q = torch.randn(2, 16, 48).half()
    with use_kernels("triton"):
        out, _ = torch.ops.rocm_attn.mla_decode(q, cache.latent_cache, torch.tensor([20, 9]), table, 0.15, 32)
    ref, _ = reference_decode(q, dense, 0.15, 32)
    assert rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reshape_and_gather_round_trip(provider):
    L, R, bs = 16, 8, 4
    cache = MLACache(10, bs, L, R, torch.float32)
    alloc = cache.allocator
    slots_a = alloc.allocate("a", 7)
    slots_b = alloc.allocate("b", 5)
    kv_c, k_pe = torch.randn(12, L), torch.randn(12, R)
    slots = torch.cat([slots_a, slots_b])
    slots[3] = -1  # skipped
    with use_kernels(provider):
        torch.ops.rocm_attn.mla_reshape_and_cache(kv_c, k_pe, cache.latent_cache, slots)
    table = alloc.block_table(["a", "b"])
    # gather positions 2..6 of "a" and 1..4 of "b"
    out = torch.full((11, L + R), 7.0)
    with use_kernels(provider):  # a third, empty sequence; rows past cu[-1] untouched
        torch.ops.rocm_attn.mla_gather_cache(cache.latent_cache, torch.cat([table, table[:1]]),
                                             torch.tensor([0, 5, 9, 9], dtype=torch.int32),
                                             torch.tensor([2, 1, 0], dtype=torch.int32), out)
    rows = torch.cat([kv_c, k_pe], -1)
    assert torch.equal(out[0], rows[2])
    assert torch.equal(out[2:5], rows[4:7])
    assert torch.equal(out[5:9], rows[8:12])
    assert (out[1] == 0).all()  # slot of token 3 was skipped: the cache still holds zeros there
    assert (out[9:] == 7.0).all()


def test_opcheck():
    cache, table, _ = make_cache([5, 9], 16, 8, 4)
    q = torch.randn(2, 4, 24)
    torch.library.opcheck(torch.ops.rocm_attn.mla_decode.default,
                          (q, cache.latent_cache, torch.tensor([5, 9], dtype=torch.int32), table, 0.5, 16))
    torch.library.opcheck(torch.ops.rocm_attn.mla_reshape_and_cache.default,
                          (torch.randn(3, 16), torch.randn(3, 8), cache.latent_cache.clone(),
                           torch.tensor([0, 5, -1])))
    torch.library.opcheck(torch.ops.rocm_attn.mla_gather_cache.default,
                          (cache.latent_cache, table, torch.tensor([0, 2, 5], dtype=torch.int32),
                           torch.tensor([1, 0], dtype=torch.int32), torch.zeros(6, 24)))


def test_bad_input():
    cache, table, _ = make_cache([5], 16, 8, 4)
    lens = torch.tensor([5], dtype=torch.int32)
    with pytest.raises(ValueError, match="wide"):
        torch.ops.rocm_attn.mla_decode(torch.randn(1, 4, 20), cache.latent_cache, lens, table, 0.5, 16)
    with pytest.raises(TypeError, match="dtype|float16"):
        torch.ops.rocm_attn.mla_decode(torch.randn(1, 4, 24).half(), cache.latent_cache, lens, table, 0.5, 16)
    with pytest.raises(ValueError, match="scale"):
        torch.ops.rocm_attn.mla_decode(torch.randn(1, 4, 24), cache.latent_cache, lens, table, -1.0, 16)
    with pytest.raises(ValueError, match="sequences"):
        torch.ops.rocm_attn.mla_decode(torch.randn(2, 4, 24), cache.latent_cache, lens, table, 0.5, 16)
    with pytest.raises(ValueError, match="widths"):
        torch.ops.rocm_attn.mla_reshape_and_cache(torch.randn(2, 16), torch.randn(2, 4), cache.latent_cache,
                                                  torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive int"):
        MLACache(0, 16, 512, 64)
