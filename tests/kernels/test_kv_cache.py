"""KVCache (both layouts) and BlockAllocator: shapes, errors, allocation invariants."""

import random

import pytest
import torch
from rocm_attn.kernels.kv_cache import BlockAllocator, CacheFullError, KVCache, to_standard


@pytest.mark.parametrize("dtype, x", [(torch.float32, 4), (torch.float16, 8), (torch.bfloat16, 8)])
def test_shapes(dtype, x):
    std = KVCache(5, 16, 2, 64, dtype, "standard")
    assert std.k_cache.shape == std.v_cache.shape == (5, 16, 2, 64)
    shuf = KVCache(5, 16, 2, 64, dtype, "shuffled")
    assert shuf.x == x
    assert shuf.k_cache.shape == (5, 2, 64 // x, 16, x)
    assert shuf.v_cache.shape == (5, 2, 16 // x, 64, x)
    assert shuf.k_cache.dtype == dtype and shuf.layout == "shuffled"
    assert (shuf.num_blocks, shuf.block_size, shuf.num_kv_heads, shuf.head_dim) == (5, 16, 2, 64)
    assert isinstance(shuf.allocator, BlockAllocator) and shuf.allocator.num_free_blocks == 5


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_dense_view_matches_element_formula(layout):
    cache = KVCache(3, 8, 2, 16, torch.float32, layout)
    cache.k_cache.copy_(torch.randn(cache.k_cache.shape))
    cache.v_cache.copy_(torch.randn(cache.v_cache.shape))
    k, v = to_standard(cache.k_cache, cache.v_cache, layout)
    x = cache.x
    for blk, off, h, d in [(0, 0, 0, 0), (2, 7, 1, 15), (1, 5, 0, 9), (2, 3, 1, 4)]:
        if layout == "standard":
            want_k, want_v = cache.k_cache[blk, off, h, d], cache.v_cache[blk, off, h, d]
        else:
            want_k = cache.k_cache[blk, h, d // x, off, d % x]
            want_v = cache.v_cache[blk, h, off // x, d, off % x]
        assert k[blk, off, h, d] == want_k and v[blk, off, h, d] == want_v


def test_bad_construction():
    with pytest.raises(ValueError, match="multiples of x"):
        KVCache(4, 16, 2, 60, torch.float16, "shuffled")  # 60 % 8
    with pytest.raises(ValueError, match="multiples of x"):
        KVCache(4, 12, 2, 64, torch.float16, "shuffled")  # 12 % 8
    KVCache(4, 12, 2, 60, torch.float16, "standard")  # fine in the standard layout
    with pytest.raises(ValueError, match="layout"):
        KVCache(4, 16, 2, 64, torch.float16, "paged")
    with pytest.raises(ValueError, match="block_size"):
        KVCache(4, 0, 2, 64)
    with pytest.raises(NotImplementedError, match="fp8"):
        KVCache(4, 16, 2, 64, torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="dtype"):
        KVCache(4, 16, 2, 64, torch.int8)


def test_allocate_append_slots():
    alloc = BlockAllocator(8, 4)
    s0 = alloc.allocate("a", 6)
    s1 = alloc.allocate("b", 3)
    assert alloc.seq_len("a") == 6 and alloc.seq_len("b") == 3
    blocks_a, blocks_b = alloc.blocks("a"), alloc.blocks("b")
    assert len(blocks_a) == 2 and len(blocks_b) == 1 and not set(blocks_a) & set(blocks_b)
    want = [blocks_a[p // 4] * 4 + p % 4 for p in range(6)]
    assert s0.tolist() == want and s0.dtype == torch.int64
    assert s1.tolist() == [blocks_b[0] * 4 + p for p in range(3)]
    s2 = alloc.append("a", 3)  # positions 6, 7, 8: fills block 2, opens a third
    blocks_a = alloc.blocks("a")
    assert len(blocks_a) == 3
    assert s2.tolist() == [blocks_a[1] * 4 + 2, blocks_a[1] * 4 + 3, blocks_a[2] * 4]
    assert alloc.num_free_blocks == 8 - 4
    assert alloc.append("b", 0).numel() == 0
    table = alloc.block_table(["b", "a"])
    assert table.dtype == torch.int32 and table.shape == (2, 3)
    assert table[1].tolist() == blocks_a and table[0, 0].item() == blocks_b[0]
    assert alloc.block_table(["a"], width=5).shape == (1, 5)
    with pytest.raises(ValueError, match="width"):
        alloc.block_table(["a"], width=2)


def test_cache_full_changes_nothing_and_free_reuses():
    alloc = BlockAllocator(4, 4)
    alloc.allocate(1, 8)
    alloc.allocate(2, 4)
    before = (alloc.blocks(1), alloc.blocks(2), alloc.num_free_blocks)
    with pytest.raises(CacheFullError, match="needs 2 more block"):
        alloc.append(2, 5)
    with pytest.raises(CacheFullError):
        alloc.allocate(3, 9)
    assert isinstance(CacheFullError("x"), RuntimeError)
    assert (alloc.blocks(1), alloc.blocks(2), alloc.num_free_blocks) == before
    assert 3 not in alloc
    alloc.append(2, 4)  # exactly the last free block
    assert alloc.num_free_blocks == 0
    freed = alloc.blocks(1)
    alloc.free(1)
    assert alloc.num_free_blocks == 2
    alloc.allocate(4, 8)
    assert sorted(alloc.blocks(4)) == sorted(freed)


def test_allocator_errors():
    alloc = BlockAllocator(4, 4)
    alloc.allocate("a", 1)
    with pytest.raises(ValueError, match="already exists"):
        alloc.allocate("a", 1)
    with pytest.raises(KeyError, match="unknown sequence"):
        alloc.append("zzz", 1)
    with pytest.raises(KeyError):
        alloc.free("zzz")
    with pytest.raises(ValueError, match=">= 0"):
        alloc.append("a", -1)


def test_random_ops_never_share_blocks():
    rng = random.Random(1)
    alloc = BlockAllocator(32, 8)
    live: dict[int, list[int]] = {}  # seq -> slots it owns, in order
    next_id = 0
    for _ in range(400):
        op = rng.random()
        try:
            if op < 0.3 or not live:
                n = rng.randint(0, 40)
                live[next_id] = alloc.allocate(next_id, n).tolist()
                next_id += 1
            elif op < 0.8:
                s = rng.choice(list(live))
                live[s] += alloc.append(s, rng.randint(0, 20)).tolist()
            else:
                s = rng.choice(list(live))
                alloc.free(s)
                del live[s]
        except CacheFullError:
            pass
        owned = [b for s in live for b in alloc.blocks(s)]
        assert len(owned) == len(set(owned))  # no block in two sequences
        assert len(owned) + alloc.num_free_blocks == 32
        all_slots = [x for s in live for x in live[s]]
        assert len(all_slots) == len(set(all_slots))
        for s, slots in live.items():
            assert alloc.seq_len(s) == len(slots)
            assert all(x // 8 in alloc.blocks(s) for x in slots)


def test_grow_starts_and_extends_without_slots():
    alloc = BlockAllocator(4, 4)
    assert alloc.grow("a", 5) == 0 and alloc.seq_len("a") == 5 and len(alloc.blocks("a")) == 2
    assert alloc.grow("a", 3) == 5 and alloc.seq_len("a") == 8 and len(alloc.blocks("a")) == 2
    assert alloc.grow("a", 0) == 8 and alloc.num_free_blocks == 2
    before = (alloc.blocks("a"), alloc.num_free_blocks)
    with pytest.raises(CacheFullError):
        alloc.grow("a", 9)
    with pytest.raises(CacheFullError):
        alloc.grow("b", 9)
    assert (alloc.blocks("a"), alloc.num_free_blocks) == before and "b" not in alloc
    with pytest.raises(ValueError, match=">= 0"):
        alloc.grow("a", -1)
    # append after grow continues at the grown length
    assert alloc.append("a", 1).tolist() == [alloc.blocks("a")[2] * 4]


def test_allocator_reserve_holds_blocks_without_growing():
    alloc = BlockAllocator(8, 4)
    alloc.reserve("a", 10)  # 3 blocks, length 0
    assert alloc.seq_len("a") == 0 and len(alloc.blocks("a")) == 3 and alloc.num_free_blocks == 5
    blocks = alloc.blocks("a")
    alloc.grow("a", 12)  # within the reserve: no block taken
    assert alloc.blocks("a") == blocks and alloc.num_free_blocks == 5 and alloc.seq_len("a") == 12
    alloc.grow("a", 1)  # past it: one more
    assert alloc.num_free_blocks == 4
    with pytest.raises(CacheFullError):
        alloc.reserve("b", 17)  # 5 blocks, 4 free: nothing changes
    assert "b" not in alloc and alloc.num_free_blocks == 4
    alloc.free("a")
    assert alloc.num_free_blocks == 8
