"""The paged KV cache: the tensors (two layouts) and a block allocator.

Layouts (x = 16 // element_size: 8 for bf16/fp16, 4 for fp32, so x elements are 16 bytes):

    standard   k_cache, v_cache  [num_blocks, block_size, Hkv, D]
    shuffled   k_cache           [num_blocks, Hkv, D // x, block_size, x]
               v_cache           [num_blocks, Hkv, block_size // x, D, x]

A token's slot is ``block * block_size + offset``. The allocator hands each sequence whole
blocks; a block belongs to one sequence until that sequence is freed.
"""

from __future__ import annotations

import torch

LAYOUTS = ("standard", "shuffled")
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class CacheFullError(RuntimeError):
    """The allocator has no free block left for a request (nothing was changed)."""


def check_layout(op: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"rocm_attn.{op}: layout must be one of {LAYOUTS}, got {layout!r}")


def shuffle_x(dtype: torch.dtype) -> int:
    """Elements per 16-byte group in the shuffled layout."""
    return 16 // torch.empty((), dtype=dtype).element_size()


def cache_block_size(k_cache: torch.Tensor, layout: str) -> int:
    return k_cache.shape[1] if layout == "standard" else k_cache.shape[3]


def cache_dims(k_cache: torch.Tensor, v_cache: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(num_blocks, block_size, num_kv_heads, head_dim) of cache tensors in ``layout``."""
    if layout == "standard":
        nb, bs, h, d = k_cache.shape
        return nb, bs, h, d
    nb, h, dx, bs, x = k_cache.shape
    return nb, bs, h, dx * x


def check_cache_tensors(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor, layout: str) -> None:
    """Shapes of a (k_cache, v_cache) pair agree with ``layout``; raises ValueError otherwise."""
    check_layout(op, layout)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"rocm_attn.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"rocm_attn.{op}: k_cache is {k_cache.dtype} but v_cache is {v_cache.dtype}")
    if layout == "standard":
        if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
            raise ValueError(
                f"rocm_attn.{op}: the standard layout needs k_cache and v_cache of shape "
                f"[num_blocks, block_size, Hkv, D], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    else:
        if k_cache.dim() != 5 or v_cache.dim() != 5:
            raise ValueError(
                f"rocm_attn.{op}: the shuffled layout needs k_cache [num_blocks, Hkv, D//x, block_size, x] "
                f"and v_cache [num_blocks, Hkv, block_size//x, D, x], got {tuple(k_cache.shape)} and "
                f"{tuple(v_cache.shape)}")
        nb, h, dx, bs, x = k_cache.shape
        want_v = (nb, h, bs // x, dx * x, x)
        if x != shuffle_x(k_cache.dtype) or tuple(v_cache.shape) != want_v:
            raise ValueError(
                f"rocm_attn.{op}: shuffled caches of {k_cache.dtype} need x = {shuffle_x(k_cache.dtype)} and "
                f"v_cache shape {want_v}; got k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not t.is_contiguous():
            raise ValueError(f"rocm_attn.{op}: {name} must be contiguous")


def check_block_table_values(op: str, block_table: torch.Tensor, seq_ends: torch.Tensor, num_blocks: int,
                              block_size: int) -> None:
    """Every block a sequence reads (the first ceil(seq_ends[b] / block_size) entries of its row) lies
    in [0, num_blocks). Reads the tensors on the host: the torch providers call it (they read the
    lengths anyway); the GPU kernels rely on attention()'s checks instead of a sync per call."""
    if seq_ends.numel() == 0:
        return
    width = block_table.shape[1]
    need = torch.div(seq_ends.long().clamp_min(0) + block_size - 1, block_size, rounding_mode="floor")
    most = int(need.max())
    if most > width:
        b = int(need.argmax())
        raise ValueError(f"rocm_attn.{op}: sequence {b} reads {int(seq_ends[b])} tokens = {most} blocks of "
                         f"{block_size}, but block_table has only {width} columns")
    used = torch.arange(width, device=need.device)[None, :] < need[:, None]
    blocks = block_table[used]
    if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= num_blocks):
        raise ValueError(f"rocm_attn.{op}: block_table points outside the cache: block ids must be in "
                         f"[0, {num_blocks}), got {int(blocks.min())}..{int(blocks.max())}")


def check_slot_values(op: str, slot_mapping: torch.Tensor, num_slots: int) -> torch.Tensor:
    """The non-negative slots of one write: each below num_slots and none twice (two tokens
    written to one slot would leave either one there). Returns them (int64)."""
    slots = slot_mapping[slot_mapping >= 0].long()
    if slots.numel() == 0:
        return slots
    if int(slots.max()) >= num_slots:
        raise ValueError(f"rocm_attn.{op}: slot_mapping holds slot {int(slots.max())}, past the cache's "
                         f"{num_slots} slots")
    if slots.unique().numel() != slots.numel():
        raise ValueError(f"rocm_attn.{op}: slot_mapping writes one slot twice in a single call "
                         "(two tokens cannot share a cache slot)")
    return slots


class BlockAllocator:
    """Hands out cache blocks to sequences and tracks how many tokens each holds.

    ``allocate(seq_id, n)`` starts a sequence with n tokens; ``append(seq_id, n)`` adds n tokens;
    both return the slot ids (int64 tensor) of the new tokens, which is the slot_mapping for
    them. A request that does not fit raises CacheFullError and changes nothing. ``free``
    returns a sequence's blocks for reuse.
    """

    def __init__(self, num_blocks: int, block_size: int, device: str | torch.device = "cpu"):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"BlockAllocator: num_blocks and block_size must be > 0, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.device = torch.device(device)
        # A stack: the most recently freed block is reused first (warm in cache).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._blocks: dict[object, list[int]] = {}
        self._lens: dict[object, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._blocks

    def seq_ids(self) -> list:
        return list(self._blocks)

    def seq_len(self, seq_id) -> int:
        self._check_known(seq_id)
        return self._lens[seq_id]

    def blocks(self, seq_id) -> list[int]:
        self._check_known(seq_id)
        return list(self._blocks[seq_id])

    def allocate(self, seq_id, num_tokens: int) -> torch.Tensor:
        if seq_id in self._blocks:
            raise ValueError(f"BlockAllocator.allocate: sequence {seq_id!r} already exists; use append()")
        self._check_count("allocate", num_tokens)
        self.grow(seq_id, num_tokens)
        return self._slots(seq_id, 0, num_tokens)

    def append(self, seq_id, num_new_tokens: int) -> torch.Tensor:
        self._check_known(seq_id)
        self._check_count("append", num_new_tokens)
        start = self.grow(seq_id, num_new_tokens)
        return self._slots(seq_id, start, num_new_tokens)

    def grow(self, seq_id, num_new_tokens: int) -> int:
        """Add tokens to a sequence (starting it if new) without building their slot tensor (no
        device copy: metadata builders make their own); returns its length before. Raises
        CacheFullError and changes nothing when the blocks do not fit."""
        self._check_count("grow", num_new_tokens)
        blocks = self._blocks.get(seq_id, [])
        start = self._lens.get(seq_id, 0)
        self._reserve(seq_id, blocks, start + num_new_tokens)
        need = -(-(start + num_new_tokens) // self.block_size) - len(blocks)
        for _ in range(need):
            blocks.append(self._free.pop())
        self._blocks[seq_id] = blocks
        self._lens[seq_id] = start + num_new_tokens
        return start

    def reserve(self, seq_id, num_tokens: int) -> None:
        """Hold blocks for ``num_tokens`` tokens of a sequence (starting it, empty, if new) without
        changing its length: later growth up to that size takes no block from the free list, so its
        block table stays fixed (what a CUDA-graph decode step needs). CacheFullError when they do not fit."""
        self._check_count("reserve", num_tokens)
        blocks = self._blocks.get(seq_id, [])
        self._reserve(seq_id, blocks, num_tokens)
        for _ in range(-(-num_tokens // self.block_size) - len(blocks)):
            blocks.append(self._free.pop())
        self._blocks[seq_id] = blocks
        self._lens.setdefault(seq_id, 0)

    def _slots(self, seq_id, start: int, num_tokens: int) -> torch.Tensor:
        """Slot ids of positions start .. start + num_tokens - 1 of a sequence, on the device."""
        pos = torch.arange(start, start + num_tokens)
        table = torch.tensor(self._blocks[seq_id], dtype=torch.int64)
        slots = table[pos // self.block_size] * self.block_size + pos % self.block_size
        return slots.to(self.device)

    def free(self, seq_id) -> None:
        self._check_known(seq_id)
        # reversed so that the sequence's first block is handed out first next time
        self._free.extend(reversed(self._blocks.pop(seq_id)))
        del self._lens[seq_id]

    def block_table(self, seq_ids, width: int | None = None) -> torch.Tensor:
        """[len(seq_ids), width] int32; rows padded with 0 (never read: seq_lens bounds them)."""
        seq_ids = list(seq_ids)
        for s in seq_ids:
            self._check_known(s)
        longest = max((len(self._blocks[s]) for s in seq_ids), default=0)
        width = max(longest, 1) if width is None else width
        if width < longest:
            raise ValueError(f"BlockAllocator.block_table: width {width} < {longest} blocks of the longest sequence")
        table = torch.zeros((len(seq_ids), width), dtype=torch.int32)
        for i, s in enumerate(seq_ids):
            blocks = self._blocks[s]
            table[i, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        return table.to(self.device)

    def _reserve(self, seq_id, blocks: list[int], total_tokens: int) -> None:
        need = -(-total_tokens // self.block_size) - len(blocks)
        if need > len(self._free):
            raise CacheFullError(
                f"KV cache full: sequence {seq_id!r} needs {need} more block(s) of {self.block_size} tokens "
                f"but only {len(self._free)} of {self.num_blocks} are free; free finished sequences or "
                f"make the cache larger")

    def _check_known(self, seq_id) -> None:
        if seq_id not in self._blocks:
            raise KeyError(f"BlockAllocator: unknown sequence {seq_id!r}")

    @staticmethod
    def _check_count(what: str, n) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"BlockAllocator.{what}: the number of tokens must be an int >= 0, got {n!r}")


class KVCache:
    """One layer's paged K and V cache (``k_cache``, ``v_cache``) plus its block allocator.

    Layers of one model can share a single allocator (pass ``allocator=``): the block ids are
    the same for every layer.
    """

    def __init__(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.bfloat16, layout: str = "standard",
                 device: str | torch.device = "cpu", allocator: BlockAllocator | None = None):
        check_layout("KVCache", layout)
        for name, val in (("num_blocks", num_blocks), ("block_size", block_size),
                          ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"rocm_attn.KVCache: {name} must be a positive int, got {val!r}")
        if dtype not in CACHE_DTYPES:
            if dtype.is_floating_point and dtype.itemsize == 1:
                raise NotImplementedError(
                    f"rocm_attn.KVCache: an fp8 cache ({dtype}) needs per-layer k/v scales, not supported yet; "
                    "use bfloat16 or float16")
            raise TypeError(f"rocm_attn.KVCache: dtype must be one of {CACHE_DTYPES}, got {dtype}")
        x = shuffle_x(dtype)
        if layout == "shuffled" and (head_dim % x or block_size % x):
            raise ValueError(
                f"rocm_attn.KVCache: the shuffled layout needs head_dim and block_size to be multiples of "
                f"x = 16 // element_size = {x} for {dtype}; got head_dim={head_dim}, block_size={block_size}")
        if allocator is not None and (allocator.num_blocks != num_blocks or allocator.block_size != block_size):
            raise ValueError("rocm_attn.KVCache: the shared allocator has a different num_blocks or block_size")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.dtype, self.layout, self.x = dtype, layout, x
        self.device = torch.device(device)
        if layout == "standard":
            k_shape = v_shape = (num_blocks, block_size, num_kv_heads, head_dim)
        else:
            k_shape = (num_blocks, num_kv_heads, head_dim // x, block_size, x)
            v_shape = (num_blocks, num_kv_heads, block_size // x, head_dim, x)
        self.k_cache = torch.zeros(k_shape, dtype=dtype, device=self.device)
        self.v_cache = torch.zeros(v_shape, dtype=dtype, device=self.device)
        self.allocator = allocator if allocator is not None else BlockAllocator(num_blocks, block_size, self.device)

    def __repr__(self) -> str:
        return (f"KVCache(num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, dtype={self.dtype}, "
                f"layout={self.layout!r}, device={self.device})")

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both caches in the standard layout [num_blocks, block_size, Hkv, D] (a copy when shuffled)."""
        return to_standard(self.k_cache, self.v_cache, self.layout)


def to_standard(k_cache: torch.Tensor, v_cache: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache tensors of either layout as [num_blocks, block_size, Hkv, D] views/copies."""
    if layout == "standard":
        return k_cache, v_cache
    nb, h, dx, bs, x = k_cache.shape
    k = k_cache.permute(0, 3, 1, 2, 4).reshape(nb, bs, h, dx * x)
    # v [nb, h, bs//x, D, x] -> [nb, bs//x, x, h, D]
    v = v_cache.permute(0, 2, 4, 1, 3).reshape(nb, bs, h, dx * x)
    return k, v
