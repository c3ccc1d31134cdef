"""Bad input (issue 9, item 2): each case gets a clear error naming the argument, or a correct result.

The errors come from the ops' argument checks, from attention()'s host-side checks, and from the
torch providers' value checks (what runs on CPU). Every case that raises also checks that nothing
was written (the cache is unchanged)."""

import pytest
import torch
from rocm_attn.kernels.attention_metadata import build_metadata_from_allocator, split_counts
from rocm_attn.kernels.mla import MLACache

import rocm_attn
from rocm_attn import CacheFullError, KVCache
from rocm_attn.testing import make_mixed_batch, make_mla_batch, reference_attention, rel_err

ops = torch.ops.rocm_attn
I32 = torch.int32


@pytest.fixture
def batch():
    # a decode (context 5) and an extend (context 9 + 3 new), GQA 2:4, block size 4
    return make_mixed_batch([(5, 1), (9, 3)], num_kv_heads=2, group=2, head_dim=16, block_size=4)


def attend(b, **changes):
    args = dict(
        q=b.q,
        k=b.k,
        v=b.v,
        kv_cache=b.kv_cache,
        query_start_loc=b.query_start_loc,
        seq_lens=b.seq_lens,
        block_table=b.block_table,
        slot_mapping=b.slot_mapping,
    )
    args.update(changes)
    return rocm_attn.attention(**args, scale=b.scale)


def cache_copy(b):
    return b.kv_cache.k_cache.clone(), b.kv_cache.v_cache.clone()


def assert_cache_unchanged(b, before):
    assert torch.equal(b.kv_cache.k_cache, before[0]) and torch.equal(b.kv_cache.v_cache, before[1])


# ---------------------------------------------------------------- dtype / device / rank


def test_wrong_dtype(batch):
    with pytest.raises(TypeError, match=r"per_token_quant_fp8: x has dtype torch.int32"):
        ops.per_token_quant_fp8(torch.ones(2, 8, dtype=I32))
    with pytest.raises(TypeError, match=r"flash_attn_varlen: q has dtype torch.int64"):
        ops.flash_attn_varlen(
            batch.q.long(), batch.k, batch.v, batch.query_start_loc, batch.query_start_loc, 3, 3, 0.25, True
        )
    with pytest.raises(TypeError, match=r"ptpc_scaled_mm: wq has dtype torch.float32; expected an fp8"):
        ops.ptpc_scaled_mm(
            torch.zeros(2, 8).to(torch.float8_e4m3fn), torch.ones(2, 1), torch.zeros(4, 8), torch.ones(4, 1)
        )
    with pytest.raises(TypeError, match=r"paged_decode: seq_lens must be int32, got torch.float32"):
        ops.paged_decode(
            batch.q[:2],
            batch.kv_cache.k_cache,
            batch.kv_cache.v_cache,
            batch.seq_lens.float(),
            batch.block_table,
            0.25,
            "standard",
        )
    with pytest.raises(TypeError, match=r"attention: q, k, v and the cache must share one dtype"):
        attend(batch, q=batch.q.half())


def test_wrong_device(batch):
    # "meta" stands in for a second device on a CPU-only machine: the same check catches cuda vs cpu
    with pytest.raises(ValueError, match=r"one device, got q on cpu, k on meta"):
        ops.flash_attn_varlen(
            batch.q,
            batch.k.to("meta"),
            batch.v,
            batch.query_start_loc,
            batch.query_start_loc,
            3,
            3,
            0.25,
            True,
        )
    with pytest.raises(ValueError, match=r"ptpc_linear: all tensors must be on one device.*w_scale on meta"):
        wq, ws = rocm_attn.quantize_weight_per_channel(torch.randn(4, 8))
        ops.ptpc_linear(torch.randn(2, 8), wq, ws.to("meta"))
    with pytest.raises(
        ValueError, match=r"attention: all tensors must be on one device.*block_table on meta"
    ):
        attend(batch, block_table=batch.block_table.to("meta"))


def test_wrong_rank(batch):
    with pytest.raises(ValueError, match=r"per_token_quant_fp8: x must be \[..., K\] with at least 2 dims"):
        ops.per_token_quant_fp8(torch.randn(8))
    with pytest.raises(ValueError, match=r"paged_decode: q must be \[B, Hq, D\], got shape \(2, 64\)"):
        ops.paged_decode(
            batch.q[:2].reshape(2, -1),
            batch.kv_cache.k_cache,
            batch.kv_cache.v_cache,
            batch.seq_lens,
            batch.block_table,
            0.25,
            "standard",
        )
    with pytest.raises(ValueError, match=r"attention: block_table must be \[B, max_blocks\]"):
        attend(batch, block_table=batch.block_table.flatten())
    with pytest.raises(ValueError, match=r"ptpc_scaled_mm: wq must be \[N, K\]"):
        ops.ptpc_scaled_mm(
            torch.zeros(2, 8).to(torch.float8_e4m3fn),
            torch.ones(2, 1),
            torch.zeros(4, 8, 1).to(torch.float8_e4m3fn),
            torch.ones(4, 1),
        )


def test_mismatched_head_counts(batch):
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of KV heads \(2\)"):
        ops.flash_attn_varlen(
            batch.q[:, :3], batch.k, batch.v, batch.query_start_loc, batch.query_start_loc, 3, 3, 0.25, True
        )
    with pytest.raises(ValueError, match=r"k has 2 heads but v has 1"):
        ops.flash_attention(
            torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), None, 0.3, True
        )
    with pytest.raises(ValueError, match=r"attention: k and v must be \[T, 2, 16\] \(the cache's Hkv, D\)"):
        attend(batch, k=batch.k[:, :1], v=batch.v[:, :1])
    with pytest.raises(
        ValueError, match=r"unified_attention: q has 3 heads, not a multiple of the cache's 2"
    ):
        c = batch.kv_cache
        ops.unified_attention(
            batch.q[:, :3],
            c.k_cache,
            c.v_cache,
            batch.query_start_loc,
            batch.seq_lens,
            batch.block_table,
            0.25,
            "standard",
            0,
            0.0,
            3,
            12,
        )


# ---------------------------------------------------------------- paged-cache indices


def test_block_table_past_the_cache(batch):
    c = batch.kv_cache
    bad = batch.block_table.clone()
    bad[1, 2] = c.num_blocks  # one past the last block, inside sequence 1's used entries
    before = cache_copy(batch)
    msg = r"block_table points outside the cache"
    with pytest.raises(ValueError, match=rf"attention: {msg}"):
        attend(batch, block_table=bad)
    assert_cache_unchanged(batch, before)  # checked before the write
    with pytest.raises(ValueError, match=rf"unified_attention: {msg}"):
        ops.unified_attention(
            batch.q,
            c.k_cache,
            c.v_cache,
            batch.query_start_loc,
            batch.seq_lens,
            bad,
            0.25,
            "standard",
            0,
            0.0,
            3,
            12,
        )
    with pytest.raises(ValueError, match=rf"paged_decode: {msg}"):
        ops.paged_decode(batch.q[:2], c.k_cache, c.v_cache, batch.seq_lens, bad, 0.25, "standard")
    with pytest.raises(ValueError, match=rf"gather_cache: {msg}"):
        out = torch.empty(14, 2, 16)
        ops.gather_cache(
            c.k_cache,
            c.v_cache,
            bad,
            torch.tensor([0, 5, 14], dtype=I32),
            torch.zeros(2, dtype=I32),
            out,
            out.clone(),
            "standard",
        )
    with pytest.raises(
        ValueError,
        match=r"paged_decode: sequence 1 reads 100 tokens = 25 blocks of 4, "
        r"but block_table has only 3 columns",
    ):
        ops.paged_decode(
            batch.q[:2],
            c.k_cache,
            c.v_cache,
            torch.tensor([5, 100], dtype=I32),
            batch.block_table,
            0.25,
            "standard",
        )
    # padding entries past a sequence's length are never read: any value is fine there
    padded = torch.cat([batch.block_table, torch.full((2, 1), 10**6, dtype=I32)], dim=1)
    assert torch.equal(attend(batch, block_table=padded), attend(batch))


def test_mla_block_table_past_the_cache():
    b = make_mla_batch(
        [(6, 1), (3, 1)],
        num_heads=2,
        kv_lora_rank=16,
        rope_dim=8,
        nope_dim=8,
        v_dim=8,
        block_size=4,
        dtype=torch.float32,
    )
    bad = b.metadata.block_table.clone()
    bad[0, 1] = -1
    q = torch.randn(2, 2, 24)
    with pytest.raises(ValueError, match=r"mla_decode: block_table points outside the cache"):
        ops.mla_decode(q, b.mla_cache.latent_cache, b.metadata.seq_lens, bad, 0.3, 16)


def test_duplicate_slots_in_one_write(batch):
    c = batch.kv_cache
    dup = batch.slot_mapping.clone()
    dup[3] = dup[2]
    before = cache_copy(batch)
    msg = r"slot_mapping writes one slot twice in a single call"
    with pytest.raises(ValueError, match=rf"attention: {msg}"):
        attend(batch, slot_mapping=dup)
    with pytest.raises(ValueError, match=rf"reshape_and_cache: {msg}"):
        ops.reshape_and_cache(batch.k, batch.v, c.k_cache, c.v_cache, dup, "standard")
    assert_cache_unchanged(batch, before)
    latent = MLACache(4, 4, 16, 8, torch.float32)
    with pytest.raises(ValueError, match=rf"mla_reshape_and_cache: {msg}"):
        ops.mla_reshape_and_cache(
            torch.randn(2, 16), torch.randn(2, 8), latent.latent_cache, torch.tensor([5, 5])
        )
    assert not latent.latent_cache.any()
    # skipped tokens (negative slots) may repeat: they are not written
    skip = batch.slot_mapping.clone()
    skip[2:] = -1
    ops.reshape_and_cache(batch.k, batch.v, c.k_cache, c.v_cache, skip, "standard")
    slot_past = batch.slot_mapping.clone()
    slot_past[0] = c.num_blocks * c.block_size
    with pytest.raises(
        ValueError, match=r"reshape_and_cache: slot_mapping holds slot 32, past the cache's 32"
    ):
        ops.reshape_and_cache(batch.k, batch.v, c.k_cache, c.v_cache, slot_past, "standard")


def test_seq_lens_shorter_than_the_query(batch):
    c = batch.kv_cache
    short = batch.seq_lens.clone()
    short[1] = 2  # sequence 1 has 3 new tokens
    before = cache_copy(batch)
    with pytest.raises(
        ValueError, match=r"attention: sequence 1: seq_len 2 is shorter than its 3 new tokens"
    ):
        attend(batch, seq_lens=short)
    assert_cache_unchanged(batch, before)
    with pytest.raises(
        ValueError, match=r"unified_attention: sequence 1: seq_lens\[1\] = 2 is shorter than its 3"
    ):
        ops.unified_attention(
            batch.q,
            c.k_cache,
            c.v_cache,
            batch.query_start_loc,
            short,
            batch.block_table,
            0.25,
            "standard",
            0,
            0.0,
            3,
            12,
        )
    with pytest.raises(ValueError, match=r"split_counts: a seq_len is shorter than its query length"):
        split_counts(batch.query_start_loc, short)
    with pytest.raises(
        ValueError, match=r"flash_attn_varlen: cu_seqlens_k must rise from >= 0 to at most the 4"
    ):
        ops.flash_attn_varlen(
            batch.q,
            batch.k,
            batch.v,
            batch.query_start_loc,
            torch.tensor([0, 1, 9], dtype=I32),
            3,
            9,
            0.25,
            True,
        )
    m = make_mla_batch(
        [(4, 3)],
        num_heads=2,
        kv_lora_rank=16,
        rope_dim=8,
        nope_dim=8,
        v_dim=8,
        block_size=4,
        dtype=torch.float32,
    )
    md = m.metadata
    with pytest.raises(
        ValueError, match=r"mla_attention: a seq_len is shorter than its number of new tokens"
    ):
        from rocm_attn.kernels.mla_attention import mla_attention

        mla_attention(
            m.q,
            m.kv_c,
            m.k_pe,
            m.mla_cache,
            m.weights,
            md.query_start_loc,
            torch.tensor([2], dtype=I32),
            md.block_table,
            md.slot_mapping,
            scale=m.scale,
        )


# ---------------------------------------------------------------- NaN / Inf in activations


def _poison(x, rows):
    x = x.clone()
    x[rows[0], 1] = float("nan")
    x[rows[1], 0] = float("inf")
    x[rows[2], -1] = float("-inf")
    return x


@pytest.mark.parametrize("provider", ["torch", "triton"])
def test_nan_inf_rows_isolated_by_per_token_scales(provider):
    """NaN/Inf in some activation rows: those rows' outputs are non-finite or anything, every other row
    is bit-identical to the result without the bad rows (the per-token scale never mixes rows)."""
    torch.manual_seed(1)
    x = torch.randn(7, 40, dtype=torch.bfloat16)
    bad_rows = [1, 3, 6]
    good = [r for r in range(7) if r not in bad_rows]
    xp = _poison(x, bad_rows)
    w = torch.randn(24, 40)
    wq, ws = rocm_attn.quantize_weight_per_channel(w)
    norm_w = torch.rand(40) + 0.5
    with rocm_attn.use_kernels(provider):
        cases = {
            "per_token_quant_fp8": lambda t: ops.per_token_quant_fp8(t),
            "ptpc_linear": lambda t: (ops.ptpc_linear(t, wq, ws),),
            "rms_norm_quant_fp8": lambda t: ops.rms_norm_quant_fp8(t, norm_w.to(t.dtype), 1e-6),
            "silu_mul_quant_fp8": lambda t: ops.silu_mul_quant_fp8(t),
        }
        for name, fn in cases.items():
            clean = fn(x[good])
            dirty = fn(xp)
            for a, b in zip(clean, dirty, strict=True):
                assert torch.equal(a.float(), b[good].float()), f"{name}: a NaN/Inf row changed another row"
            assert torch.isfinite(clean[0].float()).all()


# ---------------------------------------------------------------- exhausted allocator


def test_exhausted_allocator_changes_nothing_and_freed_blocks_are_reused():
    torch.manual_seed(2)
    cache = KVCache(num_blocks=4, block_size=4, num_kv_heads=1, head_dim=8, dtype=torch.float32)
    alloc = cache.allocator
    k_a, v_a = torch.randn(10, 1, 8), torch.randn(10, 1, 8)
    rocm_attn.reshape_and_cache(k_a, v_a, cache, alloc.allocate("a", 10))  # 3 blocks
    blocks_a = alloc.blocks("a")
    with pytest.raises(
        CacheFullError, match=r"sequence 'b' needs 2 more block\(s\) of 4 tokens but only 1 of 4"
    ):
        alloc.allocate("b", 5)
    assert "b" not in alloc and alloc.num_free_blocks == 1
    with pytest.raises(CacheFullError, match=r"sequence 'a' needs 2 more block"):
        alloc.append("a", 7)  # 17 tokens = 5 blocks: 2 more, one free
    assert alloc.seq_len("a") == 10 and alloc.blocks("a") == blocks_a
    # a step through the metadata builder: the failing sequence is left out, "a" keeps its data
    with pytest.raises(CacheFullError):
        build_metadata_from_allocator(alloc, ["c"], [9])
    assert "c" not in alloc
    rocm_attn.reshape_and_cache(torch.randn(2, 1, 8), torch.randn(2, 1, 8), cache, alloc.allocate("d", 2))
    assert not set(alloc.blocks("d")) & set(blocks_a)
    k_std, v_std = cache.dense()
    got = k_std[torch.tensor(blocks_a)].reshape(-1, 1, 8)[:10]
    assert torch.equal(got, k_a), "an allocation overwrote another sequence's blocks"
    # freeing returns the blocks; the next sequence reuses them and reads back its own data
    alloc.free("a")
    assert alloc.num_free_blocks == 3
    slots = alloc.allocate("e", 12)
    assert set(alloc.blocks("e")) == set(blocks_a) and alloc.num_free_blocks == 0
    k_e = torch.randn(12, 1, 8)
    rocm_attn.reshape_and_cache(k_e, k_e.clone(), cache, slots)
    k_std, _ = cache.dense()
    assert torch.equal(k_std[torch.tensor(alloc.blocks("e"))].reshape(-1, 1, 8)[:12], k_e)


def test_attention_after_reuse_matches_reference():
    """A freed-and-reused block holds stale data past the new sequence's length: never read."""
    torch.manual_seed(3)
    cache = KVCache(num_blocks=3, block_size=4, num_kv_heads=1, head_dim=8, dtype=torch.float32)
    alloc = cache.allocator
    md = build_metadata_from_allocator(alloc, ["old"], [12])
    q, k, v = torch.randn(12, 2, 8), torch.randn(12, 1, 8), torch.randn(12, 1, 8)
    rocm_attn.attention(
        q,
        k,
        v,
        cache,
        md.query_start_loc,
        md.seq_lens,
        md.block_table,
        md.slot_mapping,
        scale=0.35,
        metadata=md,
    )
    alloc.free("old")
    md = build_metadata_from_allocator(alloc, ["new"], [5])
    q, k, v = torch.randn(5, 2, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
    out = rocm_attn.attention(
        q, k, v, cache, md.query_start_loc, md.seq_lens, md.block_table, md.slot_mapping, scale=0.35
    )
    ref = reference_attention(q, [k], [v], [5], 0.35)
    assert rel_err(out, ref) < 1e-5
