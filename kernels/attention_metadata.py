"""Per-step attention metadata: the packed tensors the kernels take, built so they cannot be wrong.

A batch of B sequences; sequence b has ``context_lens[b]`` tokens already in the cache and
``query_lens[b]`` new tokens in this step (packed one after another into q/k/v [T, H, D]).

    query_start_loc [B+1] int32   cumulative query_lens (0, q0, q0+q1, ...)
    seq_lens        [B]   int32   context_lens + query_lens
    block_table     [B, max_blocks] int32
    slot_mapping    [T]   int64   cache slot of each new token (negative = do not write)

Classification (decode_threshold = 1): decode if query_len <= threshold; else prefill if the
context is empty; else extend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_cache import BlockAllocator


@dataclass(frozen=True)
class SplitCounts:
    num_decodes: int
    num_decode_tokens: int
    num_extends: int
    num_extend_tokens: int
    num_prefills: int
    num_prefill_tokens: int


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_table: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64
    # host-side copies, so kernels' launch code never syncs with the device
    query_lens: list[int]
    context_lens: list[int]
    max_query_len: int
    max_seq_len: int
    num_decodes: int
    num_decode_tokens: int
    num_extends: int
    num_extend_tokens: int
    num_prefills: int
    num_prefill_tokens: int
    block_size: int = 0

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def split_counts(self) -> SplitCounts:
        return SplitCounts(self.num_decodes, self.num_decode_tokens, self.num_extends,
                           self.num_extend_tokens, self.num_prefills, self.num_prefill_tokens)


def classify(query_len: int, context_len: int, decode_threshold: int = 1) -> str:
    """'decode' | 'prefill' | 'extend' for one sequence (REFERENCE.md)."""
    if query_len <= decode_threshold:
        return "decode"
    return "prefill" if context_len == 0 else "extend"


def split_counts_from_lens(query_lens, context_lens, decode_threshold: int = 1) -> SplitCounts:
    counts = {"decode": [0, 0], "extend": [0, 0], "prefill": [0, 0]}
    for q, c in zip(query_lens, context_lens):
        entry = counts[classify(int(q), int(c), decode_threshold)]
        entry[0] += 1
        entry[1] += int(q)
    return SplitCounts(*counts["decode"], *counts["extend"], *counts["prefill"])


def split_counts(query_start_loc: torch.Tensor, seq_lens: torch.Tensor, decode_threshold: int = 1) -> SplitCounts:
    """num_decodes / num_extends / num_prefills and their token counts (reads the tensors on the host)."""
    qsl = query_start_loc.to("cpu", torch.int64)
    query_lens = (qsl[1:] - qsl[:-1]).tolist()
    context_lens = (seq_lens.to("cpu", torch.int64) - (qsl[1:] - qsl[:-1])).tolist()
    if any(c < 0 for c in context_lens):
        raise ValueError("rocm_attn.split_counts: a seq_len is shorter than its query length")
    return split_counts_from_lens(query_lens, context_lens, decode_threshold)


def build_metadata(context_lens, query_lens, block_tables, block_size: int,
                   device: str | torch.device = "cpu", decode_threshold: int = 1,
                   max_blocks: int | None = None) -> AttentionMetadata:
    """Packed metadata from per-sequence (context_len, query_len, block ids).

    ``block_tables`` is a list of block-id lists (or a [B, max_blocks] tensor). Each sequence
    must own enough blocks for context_len + query_len tokens; the new tokens' slots are
    positions context_len .. context_len + query_len - 1 of the sequence.
    """
    context_lens = [int(c) for c in context_lens]
    query_lens = [int(q) for q in query_lens]
    if isinstance(block_tables, torch.Tensor):
        block_tables = block_tables.tolist()
    block_tables = [[int(b) for b in row] for row in block_tables]
    if not (len(context_lens) == len(query_lens) == len(block_tables)):
        raise ValueError(
            f"rocm_attn.build_metadata: context_lens, query_lens and block_tables must have one entry per "
            f"sequence; got {len(context_lens)}, {len(query_lens)}, {len(block_tables)}")
    if block_size <= 0:
        raise ValueError(f"rocm_attn.build_metadata: block_size must be > 0, got {block_size}")
    slots = []
    for b, (c, q, blocks) in enumerate(zip(context_lens, query_lens, block_tables)):
        if c < 0 or q < 0:
            raise ValueError(f"rocm_attn.build_metadata: sequence {b}: negative length (context {c}, query {q})")
        need = -(-(c + q) // block_size)
        if len(blocks) < need:
            raise ValueError(
                f"rocm_attn.build_metadata: sequence {b} has {c + q} tokens and needs {need} blocks of "
                f"{block_size}, but its block table lists {len(blocks)}")
        if min(blocks[:need], default=0) < 0:
            raise ValueError(f"rocm_attn.build_metadata: sequence {b}: negative block id in {blocks[:need]}")
        # positions c .. c+q-1, one run of consecutive slots per block they touch (no loop over tokens)
        for i in range(c // block_size, need):
            lo, hi = max(c, i * block_size), min(c + q, (i + 1) * block_size)
            base = (blocks[i] - i) * block_size  # slot of position p in block i: base + p
            slots.extend(range(base + lo, base + hi))
    width = max((len(r) for r in block_tables), default=0)
    width = max(width, 1) if max_blocks is None else max_blocks
    padded = [row[:width] + [0] * (width - len(row)) for row in block_tables]
    table = torch.tensor(padded, dtype=torch.int32).reshape(len(block_tables), width)
    qsl = [0]
    for q in query_lens:
        qsl.append(qsl[-1] + q)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    counts = split_counts_from_lens(query_lens, context_lens, decode_threshold)
    device = torch.device(device)
    return AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_table=table.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_lens=query_lens,
        context_lens=context_lens,
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        num_decodes=counts.num_decodes, num_decode_tokens=counts.num_decode_tokens,
        num_extends=counts.num_extends, num_extend_tokens=counts.num_extend_tokens,
        num_prefills=counts.num_prefills, num_prefill_tokens=counts.num_prefill_tokens,
        block_size=block_size,
    )


def build_metadata_from_allocator(allocator: BlockAllocator, seq_ids, query_lens,
                                  device: str | torch.device | None = None,
                                  decode_threshold: int = 1) -> AttentionMetadata:
    """One engine step: add ``query_lens[b]`` new tokens to each sequence (allocating sequences the
    allocator does not know yet), then build the metadata for them.

    Raises CacheFullError (from the allocator) when the cache runs out; sequences appended before
    the failing one keep their new tokens, so free or retry them.
    """
    seq_ids = list(seq_ids)
    query_lens = [int(q) for q in query_lens]
    if len(seq_ids) != len(query_lens):
        raise ValueError(f"rocm_attn.build_metadata_from_allocator: {len(seq_ids)} seq_ids but "
                         f"{len(query_lens)} query_lens")
    if len(set(seq_ids)) != len(seq_ids):
        raise ValueError("rocm_attn.build_metadata_from_allocator: a sequence appears twice in seq_ids")
    # grow(), not append(): append builds a slot tensor on the device per sequence (a copy and a sync each)
    context_lens = [allocator.grow(s, q) for s, q in zip(seq_ids, query_lens, strict=True)]
    tables = [allocator.blocks(s) for s in seq_ids]
    return build_metadata(context_lens, query_lens, tables, allocator.block_size,
                          allocator.device if device is None else device, decode_threshold)


def metadata_from_tensors(query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                          slot_mapping: torch.Tensor, block_size: int = 0,
                          decode_threshold: int = 1) -> AttentionMetadata:
    """Metadata around tensors a caller already has (reads them on the host once)."""
    qsl = query_start_loc.to("cpu", torch.int64)
    query_lens = (qsl[1:] - qsl[:-1]).tolist()
    context_lens = [int(s) - q for s, q in zip(seq_lens.tolist(), query_lens)]
    counts = split_counts_from_lens(query_lens, context_lens, decode_threshold)
    return AttentionMetadata(
        query_start_loc=query_start_loc, seq_lens=seq_lens, block_table=block_table, slot_mapping=slot_mapping,
        query_lens=query_lens, context_lens=context_lens,
        max_query_len=max(query_lens, default=0),
        max_seq_len=max((q + c for q, c in zip(query_lens, context_lens)), default=0),
        num_decodes=counts.num_decodes, num_decode_tokens=counts.num_decode_tokens,
        num_extends=counts.num_extends, num_extend_tokens=counts.num_extend_tokens,
        num_prefills=counts.num_prefills, num_prefill_tokens=counts.num_prefill_tokens,
        block_size=block_size,
    )
