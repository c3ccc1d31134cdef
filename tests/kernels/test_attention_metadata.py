"""AttentionMetadata builders and the decode / extend / prefill split."""

import pytest
import torch

from rocm_attn.kernels.attention_metadata import (
    build_metadata, build_metadata_from_allocator, classify, metadata_from_tensors, split_counts)
from rocm_attn.kernels.kv_cache import BlockAllocator, CacheFullError


def test_build_metadata_by_hand():
    # seq0: decode at position 20; seq1: prefill of 5; seq2: extend 3 tokens on a 16-token context
    md = build_metadata([20, 0, 16], [1, 5, 3], [[7, 2], [4], [1, 9]], block_size=16)
    assert md.query_start_loc.tolist() == [0, 1, 6, 9] and md.query_start_loc.dtype == torch.int32
    assert md.seq_lens.tolist() == [21, 5, 19] and md.seq_lens.dtype == torch.int32
    assert md.block_table.tolist() == [[7, 2], [4, 0], [1, 9]] and md.block_table.dtype == torch.int32
    assert md.slot_mapping.tolist() == [2 * 16 + 4, 64, 65, 66, 67, 68, 9 * 16, 9 * 16 + 1, 9 * 16 + 2]
    assert md.slot_mapping.dtype == torch.int64
    assert (md.max_query_len, md.max_seq_len) == (5, 21)
    assert (md.num_decodes, md.num_decode_tokens) == (1, 1)
    assert (md.num_prefills, md.num_prefill_tokens) == (1, 5)
    assert (md.num_extends, md.num_extend_tokens) == (1, 3)
    assert md.query_lens == [1, 5, 3] and md.context_lens == [20, 0, 16] and md.num_tokens == 9


def test_classify_and_threshold():
    assert classify(1, 50) == "decode" and classify(1, 0) == "decode"
    assert classify(4, 0) == "prefill" and classify(4, 3) == "extend"
    assert classify(4, 3, decode_threshold=4) == "decode"
    qsl = torch.tensor([0, 1, 5, 9, 10], dtype=torch.int32)
    seq_lens = torch.tensor([8, 4, 12, 1], dtype=torch.int32)
    counts = split_counts(qsl, seq_lens)
    assert (counts.num_decodes, counts.num_decode_tokens) == (2, 2)
    assert (counts.num_prefills, counts.num_prefill_tokens) == (1, 4)
    assert (counts.num_extends, counts.num_extend_tokens) == (1, 4)
    assert split_counts(qsl, seq_lens, decode_threshold=4).num_decodes == 4
    with pytest.raises(ValueError, match="shorter"):
        split_counts(qsl, torch.tensor([8, 3, 12, 1], dtype=torch.int32))


def test_metadata_from_tensors_matches_builder():
    md = build_metadata([3, 0, 40], [1, 7, 2], [[0], [1], [2, 3, 5]], block_size=16)
    md2 = metadata_from_tensors(md.query_start_loc, md.seq_lens, md.block_table, md.slot_mapping, 16)
    assert md2.split_counts() == md.split_counts()
    assert (md2.query_lens, md2.context_lens, md2.max_query_len, md2.max_seq_len) == (
        md.query_lens, md.context_lens, md.max_query_len, md.max_seq_len)


def test_build_metadata_errors():
    with pytest.raises(ValueError, match="needs 2 blocks"):
        build_metadata([16], [1], [[3]], block_size=16)
    with pytest.raises(ValueError, match="one entry per"):
        build_metadata([1, 2], [1], [[0], [1]], block_size=16)
    with pytest.raises(ValueError, match="negative"):
        build_metadata([-1], [2], [[0]], block_size=16)
    with pytest.raises(ValueError, match="more than max_blocks=1"):
        build_metadata([0], [20], [[0, 1]], block_size=16, max_blocks=1)


def test_from_allocator_steps():
    alloc = BlockAllocator(6, 4)
    md = build_metadata_from_allocator(alloc, ["a", "b"], [5, 2])  # two prefills
    assert md.context_lens == [0, 0] and md.num_prefills == 2
    a_blocks = alloc.blocks("a")
    assert md.slot_mapping[:5].tolist() == [a_blocks[p // 4] * 4 + p % 4 for p in range(5)]
    md = build_metadata_from_allocator(alloc, ["b", "a"], [1, 3])  # decode of b, extend of a
    assert md.context_lens == [2, 5] and md.seq_lens.tolist() == [3, 8]
    assert (md.num_decodes, md.num_extends) == (1, 1)
    assert md.block_table[1, :2].tolist() == alloc.blocks("a")
    with pytest.raises(CacheFullError):
        build_metadata_from_allocator(alloc, ["c"], [100])
    with pytest.raises(ValueError, match="twice"):
        build_metadata_from_allocator(alloc, ["a", "a"], [1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_build_metadata_slots_and_table_vs_per_token(seed):
    """Random lengths (often on block edges, some empty queries) vs slots computed token by token."""
    import random

    rng = random.Random(seed)
    bs = rng.choice([1, 4, 16])
    ids = list(range(200))
    rng.shuffle(ids)
    context_lens, query_lens, tables = [], [], []
    for _ in range(rng.randint(1, 8)):
        c = rng.choice([0, bs, 2 * bs - 1, rng.randint(0, 5 * bs)])
        q = rng.choice([0, 1, bs, rng.randint(1, 3 * bs)])
        n = -(-(c + q) // bs) + rng.randint(0, 2)  # some rows list spare blocks
        tables.append(ids[:n])
        ids = ids[n:]
        context_lens.append(c)
        query_lens.append(q)
    md = build_metadata(context_lens, query_lens, tables, bs)
    want = [t[p // bs] * bs + p % bs for c, q, t in zip(context_lens, query_lens, tables, strict=True)
            for p in range(c, c + q)]
    assert md.slot_mapping.tolist() == want
    width = max(max(len(t) for t in tables), 1)
    assert md.block_table.tolist() == [t + [0] * (width - len(t)) for t in tables]
    # max_blocks: a table of that width, cutting only the spare blocks; fewer than a sequence needs is an error
    need = max(-(-(c + q) // bs) for c, q in zip(context_lens, query_lens))
    narrow = build_metadata(context_lens, query_lens, tables, bs, max_blocks=need)
    assert narrow.block_table.tolist() == [t[:need] + [0] * (need - len(t[:need])) for t in tables]
    assert narrow.slot_mapping.tolist() == want
    if need > 0:
        with pytest.raises(ValueError, match="max_blocks"):
            build_metadata(context_lens, query_lens, tables, bs, max_blocks=need - 1)


def test_build_metadata_empty_batch():
    md = build_metadata([], [], [], block_size=16)
    assert md.block_table.shape == (0, 1) and md.slot_mapping.numel() == 0 and md.num_seqs == 0


def test_from_allocator_adds_tokens_without_slot_tensors(monkeypatch):
    """The builder grows sequences (no per-sequence slot tensor) and its slots match append()'s."""
    alloc, twin = BlockAllocator(12, 4), BlockAllocator(12, 4)
    monkeypatch.setattr(BlockAllocator, "_slots", lambda *a: pytest.fail("built a slot tensor per sequence"))
    steps = [(["a", "b"], [5, 1]), (["b", "a", "c"], [1, 4, 9]), (["c"], [3])]
    got = [build_metadata_from_allocator(alloc, ids, lens).slot_mapping.tolist() for ids, lens in steps]
    monkeypatch.undo()
    for (ids, lens), slots in zip(steps, got, strict=True):
        want = []
        for s, n in zip(ids, lens, strict=True):
            want += (twin.append(s, n) if s in twin else twin.allocate(s, n)).tolist()
        assert slots == want
    assert [alloc.blocks(s) for s in "abc"] == [twin.blocks(s) for s in "abc"]
    with pytest.raises(ValueError, match=">= 0"):
        build_metadata_from_allocator(alloc, ["d"], [-1])
    assert "d" not in alloc
