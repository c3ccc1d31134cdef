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

from dataclasses import dataclass, field

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
    # split backends: SplitPlan per device, built on first use (init=False: dataclasses.replace starts empty)
    _split_plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def split_counts(self) -> SplitCounts:
        return SplitCounts(self.num_decodes, self.num_decode_tokens, self.num_extends,
                           self.num_extend_tokens, self.num_prefills, self.num_prefill_tokens)

    def split_plan(self, device: str | torch.device, workspace_tokens: int,
                   sliding_window: int = 0) -> SplitPlan:
        """The batch split of the split backends (ROCM_AITER_FA / ROCM_ATTN) from the host lists, built on
        the first call and cached here: every layer of the step reuses it (no host->device copy, no sync).
        The metadata is one step's: do not change its lists after the first attention call."""
        device = torch.device(device)
        plan = self._split_plans.get(device)
        if plan is None:
            plan = build_split_plan(self.query_lens, self.context_lens, device, workspace_tokens,
                                    sliding_window)
            self._split_plans[device] = plan
        elif plan.extend.num_seqs and (workspace_tokens, sliding_window) not in plan.extend_rounds:
            add_extend_rounds(plan, workspace_tokens, sliding_window)  # another window: one more copy
        return plan


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
    if max_blocks is not None and max_blocks < 0:
        raise ValueError(f"rocm_attn.build_metadata: max_blocks must be >= 0, got {max_blocks}")
    slots = []
    for b, (c, q, blocks) in enumerate(zip(context_lens, query_lens, block_tables)):
        if c < 0 or q < 0:
            raise ValueError(f"rocm_attn.build_metadata: sequence {b}: negative length (context {c}, query {q})")
        need = -(-(c + q) // block_size)
        if len(blocks) < need:
            raise ValueError(
                f"rocm_attn.build_metadata: sequence {b} has {c + q} tokens and needs {need} blocks of "
                f"{block_size}, but its block table lists {len(blocks)}")
        if max_blocks is not None and need > max_blocks:
            raise ValueError(f"rocm_attn.build_metadata: sequence {b} has {c + q} tokens and needs {need} blocks "
                             f"of {block_size}, more than max_blocks={max_blocks} columns of the table")
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


# ---------------------------------------------------------------- the split plan (split backends)

SPLIT_KINDS = ("decode", "extend", "prefill")  # the kind order the split backends run in


@dataclass
class SplitPart:
    """The sequences of one request kind (classify, threshold 1), in input order."""
    seqs: list[int]
    query_lens: list[int]
    context_lens: list[int]
    tokens: slice  # this kind's rows of q/k/v once they are in kind order
    seq_index: slice | torch.Tensor  # this kind's rows of seq_lens / block_table (a slice when contiguous)
    cu_seqlens: torch.Tensor | None  # [n+1] int32 cumulative query_lens (extend / prefill; None for decode)

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens, default=0)


@dataclass
class ContextRound:
    """One round of the extends' cached context: piece j is tokens [starts[j], starts[j] + len_j) of
    extend j."""
    cu_seqlens_k: torch.Tensor  # [n+1] int32 cumulative piece lengths (rows of the workspace)
    seq_starts: torch.Tensor  # [n] int32 first context position of each piece
    q_pos_offsets: torch.Tensor | None  # [n] int32 each extend's first query position in its piece (window)
    max_seqlen_k: int


@dataclass
class SplitPlan:
    decode: SplitPart
    extend: SplitPart
    prefill: SplitPart
    # [T] int32: input row of each token in kind order / kind-order row of each input token; None when the
    # input already is in kind order (decodes, then extends, then prefills: no gather, no scatter)
    token_order: torch.Tensor | None
    input_order: torch.Tensor | None
    # (workspace tokens, sliding window) -> the extends' context rounds and the workspace rows they need
    extend_rounds: dict = field(default_factory=dict)
    # (dtype, Hkv, D) -> (k, v) workspace of the extends, shared by every layer of the step
    workspaces: dict = field(default_factory=dict)


def device_int32(pieces: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """Each list as an int32 tensor on ``device``, all from ONE host->device copy. Pieces start 16-byte
    aligned, like fresh tensors (so Triton specializes its kernels for them as before)."""
    if not pieces:
        return []
    flat, starts = [], []
    for piece in pieces:
        flat.extend([0] * (-len(flat) % 4))
        starts.append(len(flat))
        flat.extend(piece)
    buf = torch.tensor(flat, dtype=torch.int32).to(device)
    return [buf[s:s + len(piece)] for s, piece in zip(starts, pieces)]


def _cumsum(lens: list[int]) -> list[int]:
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return cu


def _is_run(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else True


def context_rounds(context_ranges: list[tuple[int, int]], budget: int) -> list[list[tuple[int, int]]]:
    """Cut each extend's context range [start, end) into rounds of at most ``budget`` tokens in all:
    round r gives every extend one piece (start, length), possibly empty. Greedy: every round but
    the last is full, so the number of rounds is ceil(total / budget)."""
    left = [end - start for start, end in context_ranges]
    pos = [start for start, _ in context_ranges]
    rounds = []
    while any(left):
        room, pieces = budget, []
        for j in range(len(left)):
            take = min(left[j], room)
            pieces.append((pos[j], take))
            pos[j] += take
            left[j] -= take
            room -= take
        rounds.append(pieces)
    return rounds


def _round_lists(context_lens: list[int], workspace: int, window: int):
    """Host lists of the context rounds: [(cu_k, starts, offsets | None)], and the workspace rows needed."""
    # context a query can see: all of it, or under a window only keys >= first query position - W + 1
    ranges = [(max(0, c - window + 1) if window else 0, c) for c in context_lens]
    rounds = []
    for pieces in context_rounds(ranges, workspace):
        starts = [s for s, _ in pieces]
        offsets = [c - s for c, s in zip(context_lens, starts)] if window else None
        rounds.append((_cumsum([n for _, n in pieces]), starts, offsets))
    rows = min(workspace, max((cu[-1] for cu, _, _ in rounds), default=0))
    return rounds, rows


def _context_rounds_on(device_lists, rounds) -> list[ContextRound]:
    """ContextRounds from _round_lists' host rounds and their tensors (taken in order from device_lists)."""
    out = []
    for cu, _, offsets in rounds:
        cu_k, starts = next(device_lists), next(device_lists)
        offs = next(device_lists) if offsets is not None else None
        out.append(ContextRound(cu_k, starts, offs, max(b - a for a, b in zip(cu, cu[1:]))))
    return out


def _round_pieces(rounds) -> list[list[int]]:
    return [lst for cu, starts, offsets in rounds for lst in (cu, starts, offsets) if lst is not None]


def add_extend_rounds(plan: SplitPlan, workspace: int, window: int) -> None:
    rounds, rows = _round_lists(plan.extend.context_lens, workspace, window)
    tensors = iter(device_int32(_round_pieces(rounds), plan.extend.cu_seqlens.device))
    plan.extend_rounds[(workspace, window)] = (_context_rounds_on(tensors, rounds), rows)


def build_split_plan(query_lens: list[int], context_lens: list[int], device: torch.device, workspace: int,
                     window: int = 0, all_extend: bool = False) -> SplitPlan:
    """Which sequences and token rows each kind has, and every index tensor the split backends need (for
    the extends: under this workspace and window), in one host->device copy. Sequences without new tokens
    belong to no kind. all_extend: every sequence is an extend (extend_forward called on its own)."""
    if workspace < 1:
        raise ValueError(f"rocm_attn.build_split_plan: workspace must be >= 1 tokens, got {workspace}")
    seqs = {kind: [] for kind in SPLIT_KINDS}
    first_token = _cumsum(query_lens)
    for b, (ql, cl) in enumerate(zip(query_lens, context_lens)):
        if all_extend:
            seqs["extend"].append(b)
        elif ql > 0:
            seqs[classify(ql, cl)].append(b)
    kind_order = [b for kind in SPLIT_KINDS for b in seqs[kind]]
    in_order = all_extend or kind_order == [b for b, ql in enumerate(query_lens) if ql > 0]
    pieces = {}  # name -> host list, sent in one copy
    if not in_order:
        order = [t for b in kind_order for t in range(first_token[b], first_token[b + 1])]
        inverse = [0] * len(order)
        for i, t in enumerate(order):
            inverse[t] = i
        pieces["token_order"], pieces["input_order"] = order, inverse
    for kind in SPLIT_KINDS:
        if not _is_run(seqs[kind]):
            pieces[kind + "_seqs"] = seqs[kind]
        if kind != "decode" and seqs[kind]:
            pieces[kind + "_cu"] = _cumsum([query_lens[b] for b in seqs[kind]])
    ext_context = [context_lens[b] for b in seqs["extend"]]
    rounds, rows = _round_lists(ext_context, workspace, window) if seqs["extend"] else ([], 0)
    names = list(pieces)
    tensors = iter(device_int32([pieces[n] for n in names] + _round_pieces(rounds), device))
    dev = {n: next(tensors) for n in names}
    parts, start = {}, 0
    for kind in SPLIT_KINDS:
        ids = seqs[kind]
        num_tokens = sum(query_lens[b] for b in ids)
        seq_index = dev[kind + "_seqs"] if kind + "_seqs" in dev else slice(ids[0] if ids else 0,
                                                                               (ids[-1] + 1) if ids else 0)
        parts[kind] = SplitPart(ids, [query_lens[b] for b in ids], [context_lens[b] for b in ids],
                                slice(start, start + num_tokens), seq_index, dev.get(kind + "_cu"))
        start += num_tokens
    plan = SplitPlan(parts["decode"], parts["extend"], parts["prefill"], dev.get("token_order"),
                     dev.get("input_order"))
    if seqs["extend"]:
        plan.extend_rounds[(workspace, window)] = (_context_rounds_on(tensors, rounds), rows)
    return plan
