"""Hugging Face integration: the ``rocm_attn`` attention function and a paged HF ``Cache``.

    AttentionInterface.register("rocm_attn", rocm_attn_attention)    # done by register_hf_attention()
    model.set_attn_implementation("rocm_attn")                        # done by rocm_attn.patch()
    cache = RocmAttnCache(model, max_batch_size=4, max_cache_len=2048)
    model.generate(..., past_key_values=cache)                        # or let patch() make one per generate

Two paths, chosen per call by the attention function:

- dense (no RocmAttnCache: no cache, DynamicCache, StaticCache): ``torch.ops.rocm_attn.flash_attention``
  on HF's K/V with HF's own 4-D mask (exactly SDPA's semantics).
- paged (a RocmAttnCache), two ways:
  - host path (prefill, extend = a second turn on the same cache, any step of several new tokens):
    HF's ``update()`` only hands the new K/V through; the attention call packs the real
    (non-padding) tokens of the batch, writes them into the paged ``KVCache`` and runs
    ``rocm_attn.attention()`` (the library's path split, backend = ``Config.attention_backend``).
    It runs inside one opaque custom op (``rocm_attn::hf_paged_attention``) whose host-side
    bookkeeping (block allocation, metadata) happens once per forward step, at the first layer.
  - device path (decode: one new token per row, once the cache holds the prompt): ``decode_step``,
    device tensors only. Every row holds the blocks for ``max_cache_len`` tokens from the start
    (``decode_block_table``, fixed), and its length is its layer's position count (HF's
    ``cumulative_length``, advanced by ``update()``) minus its padding (``decode_pad``, set by the last
    host step). No host sync and fixed shapes, so generate()'s compiled decode step (patch() sets
    ``mode="reduce-overhead"``) is one CUDA graph; the next host step catches the allocator up.

How the attention function finds the cache: ``patch()`` installs a forward pre-hook that copies
``past_key_values`` into the kwarg ``rocm_attn_cache``, which HF models pass down to the attention
function.

Padding: every row of the batch is one sequence; padding tokens (mask 0) are neither cached nor
attended, their outputs are 0 (HF ignores them). Positions inside the paged cache skip padding, which
is exact for left padding (the only padding HF supports for generation) with or without sliding window.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import weakref
from typing import Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .kernels.attention import attention as paged_attention
from .kernels.attention import get_attention_backend
from .kernels.attention_metadata import build_metadata_from_allocator
from .kernels.custom_op import custom_op
from .kernels.kv_cache import BlockAllocator, CacheFullError, KVCache

log = logging.getLogger("rocm_attn")

ATTN_NAME = "rocm_attn"
CACHE_KWARG = "rocm_attn_cache"
DEFAULT_BLOCK_SIZE = 16

# cache id -> live RocmAttnCache (the custom op gets the id, an int, so graphs never hold the object)
_LIVE_CACHES: "weakref.WeakValueDictionary[int, RocmAttnCache]" = weakref.WeakValueDictionary()
_NEXT_ID = itertools.count(1)


def mark_static(t: torch.Tensor) -> None:
    """Tell torch.compile that ``t`` keeps its address (CUDA graphs then read it in place, not copy it);
    guard=False: a new cache does not recompile (a CUDA graph re-records on the new addresses)."""
    if t.device.type == "cuda":
        torch._dynamo.mark_static_address(t, guard=False)


def layout_for_backend(backend: str) -> str:
    """The KV layout a backend needs: standard when it takes it, else shuffled (ROCM_AITER_FA)."""
    layouts = get_attention_backend(backend).layouts
    return "standard" if "standard" in layouts else layouts[0]


# ----------------------------------------------------------------------------- the cache


class RocmAttnLayer(CacheLayerMixin):
    """One layer of a RocmAttnCache: HF-facing bookkeeping only (the K/V live in a paged KVCache).

    ``update`` returns the new K/V unchanged (the attention call writes them into the paged cache);
    ``cumulative_length`` is a tensor like StaticLayer's, so a compiled decode step does not recompile.
    """

    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(self, max_cache_len: int):
        super().__init__()
        self.max_cache_len = max_cache_len
        self.cumulative_length = torch.tensor(0, dtype=torch.int64)
        self.is_initialized = False

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.cumulative_length = self.cumulative_length.to(self.device)
        mark_static(self.cumulative_length)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length.add_(key_states.shape[-2])
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # a fixed width, like StaticLayer: compiled decode steps keep one shape
        return self.max_cache_len, 0

    def get_seq_length(self):
        return self.cumulative_length if self.is_initialized else 0

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        self.cumulative_length.zero_()

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError(_UNSUPPORTED.format(what="beam search (reorder_cache)"))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(_UNSUPPORTED.format(what="cropping the cache (assisted / speculative decoding)"))

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError(_UNSUPPORTED.format(what="expanding the batch (num_return_sequences / beams)"))

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError(_UNSUPPORTED.format(what="selecting batch rows (contrastive search)"))


def _attention_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """The model's attention modules: '*Attention' modules with a layer_idx (HF's convention)."""
    return [(n, m) for n, m in model.named_modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def paged_cache_refusal(config, attention_modules=()) -> str | None:
    """Why a RocmAttnCache cannot hold this model's K/V, or None when it can. It holds one head size for K
    and V in every layer, and full or sliding-window attention layers only, whose window the attention
    function is told (attention_modules: the model's, to check that; none given, not checked)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    unsupported = sorted({t for t in layer_types if t not in ("full_attention", "sliding_attention")})
    if unsupported:
        return f"layer types {unsupported} are not supported (full and sliding attention only)"
    head_dim = _head_dim(config)
    # MLA-style configs (DeepSeek-V2/V3, MiniCPM3, ...) name K's head size in parts and V's apart
    k_dim = getattr(config, "qk_head_dim", None)
    nope, rope = getattr(config, "qk_nope_head_dim", None), getattr(config, "qk_rope_head_dim", None)
    if k_dim is None and nope is not None and rope is not None:
        k_dim = nope + rope
    k_dim = k_dim or head_dim
    v_dim = getattr(config, "v_head_dim", None) or k_dim
    if not k_dim == v_dim == head_dim:
        return (f"K and V head sizes differ ({k_dim} and {v_dim}, head_dim {head_dim}: MLA-style attention); "
                "the paged cache holds one head size")
    return _window_only_in_mask(config, attention_modules)


def _window_only_in_mask(config, attention_modules) -> str | None:
    """A sliding window that only HF's mask applies (PhiMoE, Doge: the model builds a sliding-window mask
    from config.sliding_window, and its attention gets no window). The paged path takes the window from the
    attention call (kwarg sliding_window or module.sliding_window) and reads no mask on decode steps, so
    it would attend past the window."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0 or getattr(config, "layer_types", None):
        return None
    if window >= (getattr(config, "max_position_embeddings", None) or window + 1):
        return None  # a window no sequence can outgrow (PhiMoE's checkpoints: 131072)
    for name, module in attention_modules:
        if getattr(module, "sliding_window", None):
            continue
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            source = ""  # cannot tell: assume the window is not passed
        if "sliding_window" not in source:
            return (f"its sliding window ({window}) is applied only in HF's mask ({name} gets no window); "
                    "the paged cache applies the window the attention function is given")
    return None


_UNSUPPORTED = ("rocm_attn.RocmAttnCache does not support {what}; use greedy or sampling generation, or pass "
                "past_key_values=transformers.DynamicCache() (the patched model still uses rocm_attn attention "
                "on the dense path)")


class RocmAttnCache(Cache):
    """A Hugging Face ``Cache`` whose K/V live in rocm_attn's paged ``KVCache`` (one per layer, one shared
    block allocator). Batch row b is sequence b; a later ``generate()`` on the same cache with a longer
    prompt continues each sequence (the extend path).

    model: the (patched) HF model, for its config; or pass ``config=``.
    max_batch_size, max_cache_len: the pool holds max_batch_size * ceil(max_cache_len / block_size)
    blocks, allocated on the first forward (dtype and device from the model's K/V).
    backend: the rocm_attn attention backend (default: the one patch() chose, else TRITON_ATTN); it
    fixes the KV layout (standard, or shuffled for ROCM_AITER_FA).
    device_decode: decode steps (one new token per row) run on device tensors only (see the module doc),
    so a compiled decode step can be a CUDA graph; False sends them through the host-side path too (host
    syncs each step: compile such decode without CUDA graphs, i.e. drop "mode" from the CompileConfig options).
    """

    def __init__(self, model=None, *, config=None, max_batch_size: int = 1, max_cache_len: int = 4096,
                 backend: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 device_decode: bool = True):
        if config is None:
            if model is None:
                raise ValueError("RocmAttnCache: pass the model (or config=) to size the cache")
            config = model.config
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        if backend is None:
            backend = getattr(model, "_rocm_attn_config", None)
            backend = backend.attention_backend if backend is not None else "TRITON_ATTN"
        for name, val in (("max_batch_size", max_batch_size), ("max_cache_len", max_cache_len),
                          ("block_size", block_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"RocmAttnCache: {name} must be a positive int, got {val!r}")
        reason = paged_cache_refusal(config, _attention_modules(model) if model is not None else ())
        if reason is not None:
            raise NotImplementedError(f"RocmAttnCache: {type(config).__name__}: {reason}; pass "
                                      "past_key_values=transformers.DynamicCache() to generate on HF's cache")
        super().__init__(layers=[RocmAttnLayer(max_cache_len) for _ in range(config.num_hidden_layers)])
        self.backend = backend
        self.layout = layout_for_backend(backend)
        self.block_size = block_size
        self.pool_batch_size = max_batch_size
        self.pool_max_len = max_cache_len
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = _head_dim(config)
        self.kv: list[KVCache] = []
        self.allocator: BlockAllocator | None = None
        self._positions = 0  # HF positions seen (padding included), host side
        self._batch = None
        self._step_layers: set[int] = set()
        self._step = None  # (metadata, token_index) of the current forward step
        self.device_decode = bool(device_decode)
        # device decode state (made with the pool): each row's blocks, all reserved up front, and its
        # padding count (HF positions seen - tokens cached), so seq_len = cumulative_length - pad
        self.decode_block_table: torch.Tensor | None = None
        self.decode_pad: torch.Tensor | None = None
        self._decode_room = 0  # decode steps every row still has room for (host count; eager runs check it)
        # whether a host step has run since the pool was made or reset: decode steps take the device path only
        # then (an emptied cache may change batch, dtype or device on its next host step: a new pool)
        self.holds_tokens = False
        self.last_split = None  # SplitCounts of the last step (for reports and tests)
        # sequences per path, all steps run eagerly (a compiled decode step runs no Python: not counted)
        self.split_totals = {"decode": 0, "extend": 0, "prefill": 0}
        self.cache_id = next(_NEXT_ID)
        _LIVE_CACHES[self.cache_id] = self

    # HF asks these
    @property
    def is_compileable(self) -> bool:
        return True

    def get_seq_length(self, layer_idx: int = 0):
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def reset(self):
        """Empty every sequence; the pool (and the device tensors a CUDA graph holds) stays."""
        super().reset()
        if self.allocator is not None:
            for s in self.allocator.seq_ids():
                self.allocator.free(s)
            self._reserve_rows()
        self._positions, self._step_layers, self._step = 0, set(), None
        self.holds_tokens = False

    # the paged work, called from inside the hf_paged_attention op (eager Python)
    def _ensure_pool(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.kv:
            now = (batch, dtype, torch.device(device))
            was = (self._batch, self.kv[0].dtype, self.kv[0].k_cache.device)
            if now == was:
                return
            if self.holds_tokens:
                raise ValueError(f"RocmAttnCache: this cache holds a batch of {was[0]} sequences in {was[1]} on "
                                 f"{was[2]}; got a batch of {now[0]} in {now[1]} on {now[2]} (call cache.reset() "
                                 "first, or make a new cache)")
            # an empty cache (new or reset) takes the new batch / dtype / device: a new pool
            self.kv, self.allocator, self.decode_block_table, self.decode_pad = [], None, None, None
            for layer in self.layers:
                if layer.is_initialized:
                    layer.cumulative_length = layer.cumulative_length.to(device)
                    layer.dtype, layer.device = dtype, torch.device(device)
                    mark_static(layer.cumulative_length)
        if batch > self.pool_batch_size:
            self.pool_batch_size = batch  # generate() sizes it; a hand-made cache grows to the first batch
        blocks = self.pool_batch_size * -(-self.pool_max_len // self.block_size)
        self.allocator = BlockAllocator(blocks, self.block_size, device)
        self.kv = [KVCache(blocks, self.block_size, self.num_kv_heads, self.head_dim, dtype, self.layout, device,
                           allocator=self.allocator) for _ in self.layers]
        self._batch = batch
        if self.device_decode:
            per_row = -(-self.pool_max_len // self.block_size)
            self.decode_block_table = torch.zeros(batch, per_row, dtype=torch.int32, device=device)
            self.decode_pad = torch.zeros(batch, dtype=torch.int32, device=device)
            caches = [t for kv in self.kv for t in (kv.k_cache, kv.v_cache)]
            for t in (self.decode_block_table, self.decode_pad, *caches):
                mark_static(t)
            self._reserve_rows()

    def _reserve_rows(self) -> None:
        """Device decode: every row holds its blocks for pool_max_len tokens from the start, so its block
        table never changes while it grows (written in place: a CUDA graph keeps reading the same tensor)."""
        if self.decode_block_table is None:
            return
        per_row = self.decode_block_table.shape[1]
        for b in range(self._batch):
            self.allocator.reserve(b, per_row * self.block_size)
        self.decode_block_table.copy_(self.allocator.block_table(range(self._batch), width=per_row))
        self.decode_pad.zero_()
        self._decode_room = per_row * self.block_size

    def _begin_step(self, q: torch.Tensor, attn_mask: Optional[torch.Tensor], layer_idx: int,
                    sliding_window: int) -> None:
        """Which new tokens are real, their slots, and the packed metadata: once per forward step."""
        B, _, S, _ = q.shape
        self._ensure_pool(B, q.dtype, q.device)
        past = self._catch_up_device_steps(layer_idx, S)
        known = set(self.allocator.seq_ids())  # without device decode a row is new until its first step
        cached = [self.allocator.seq_len(b) if b in known else 0 for b in range(B)]
        if attn_mask is None:
            real = torch.ones(B, S, dtype=torch.bool)
        else:
            # HF's mask row i (absolute position past + i) sees itself unless the token is padding
            m = attn_mask.expand(B, attn_mask.shape[1], S, attn_mask.shape[-1])[:, 0]
            if m.shape[-1] < past + S:
                raise ValueError(f"RocmAttnCache: the attention mask covers {m.shape[-1]} positions, need {past + S}")
            seen = (m if m.dtype == torch.bool else m == 0)[..., :past + S]
            idx = torch.arange(S, device=m.device)
            real = seen[:, idx, past + idx]
            # for _check_mask_matches, cheap next to the step (a count per query cost up to 0.8 ms at 1 x 8192
            # on an H100): the keys HF's mask shows the step's last token (left padding: every row's last real
            # one, which sees the most), and whether a token sees the next position (a bidirectional span)
            visible = seen[:, S - 1].sum(-1, dtype=torch.int32).unsqueeze(1)
            sees_next = seen[:, idx[:-1], past + idx[:-1] + 1]
            both = torch.cat([real, sees_next], 1).int()
            both = torch.cat([both, visible], 1).cpu()  # one transfer
            real, sees_next, visible = both[:, :S].bool(), both[:, S:2 * S - 1].bool(), both[:, 2 * S - 1]
            _check_mask_matches(real, visible, sees_next, cached, sliding_window, layer_idx)
        query_lens = real.sum(1).tolist()
        md = build_metadata_from_allocator(self.allocator, list(range(B)), query_lens, device=q.device)
        token_index = real.reshape(-1).nonzero().squeeze(1).to(q.device)
        self._positions = past + S
        if self.decode_pad is not None:
            lens = [self.allocator.seq_len(b) for b in range(B)]
            self.decode_pad.copy_(torch.tensor([self._positions - n for n in lens], dtype=torch.int32))
            self._decode_room = self.decode_block_table.shape[1] * self.block_size - max(lens)
        self._step = (md, token_index)
        self.holds_tokens = True
        self.last_split = md.split_counts()
        for kind in self.split_totals:
            self.split_totals[kind] += getattr(self.last_split, f"num_{kind}s")

    def _catch_up_device_steps(self, layer_idx: int, new_positions: int) -> int:
        """The host count of positions after device decode steps (which only the device saw): each added
        one real token per row. Returns the positions before this step (one sync, on host-path steps only)."""
        past = self._positions
        if self.decode_pad is None or not self.layers[layer_idx].is_initialized:
            return past
        seen = int(self.layers[layer_idx].cumulative_length) - new_positions
        if seen < past:
            raise RuntimeError(f"RocmAttnCache: the cache saw {seen} positions but its host count is {past}")
        if seen > past:
            for b in range(self._batch):
                self.allocator.grow(b, seen - past)  # within the reserved blocks: nothing allocated
        return seen

    def decode_step(self, q, k, v, layer_idx: int, scale: float, sliding_window: int, softcap: float):
        """One new token per row, device tensors only (no host sync, fixed shapes: CUDA-graph safe):
        q [B,Hq,1,D], k/v [B,Hkv,1,D] -> out [B,1,Hq,Dv]. The row's length is its layer's position count
        (cumulative_length, already advanced by HF's update()) minus its padding."""
        if q.shape[0] != self._batch:
            raise ValueError(f"RocmAttnCache: this cache holds a batch of {self._batch} sequences; got "
                             f"a batch of {q.shape[0]} (call cache.reset() first, or make a new cache)")
        if not torch.compiler.is_compiling() and layer_idx == 0:
            # host bookkeeping in eager runs only: the room check (a compiled step cannot check without a
            # sync; generate() sizes the cache to its max_length and refuses a user cache that is too short,
            # see patch.py) and the path counts
            if self._decode_room <= 0:
                raise CacheFullError(f"RocmAttnCache: a sequence is at max_cache_len ({self.pool_max_len} "
                                     "tokens); make the cache larger or start a new one")
            self._decode_room -= 1
            self.split_totals["decode"] += q.shape[0]
        kv = self.kv[layer_idx]
        seq_lens = (self.layers[layer_idx].cumulative_length - self.decode_pad).to(torch.int32)
        pos = seq_lens.long() - 1
        bs = self.block_size
        slot = self.decode_block_table.gather(1, (pos // bs).unsqueeze(1)).squeeze(1).long() * bs + pos % bs
        torch.ops.rocm_attn.reshape_and_cache(k[:, :, 0].contiguous(), v[:, :, 0].contiguous(), kv.k_cache,
                                              kv.v_cache, slot, kv.layout)
        out = torch.ops.rocm_attn.paged_decode(q[:, :, 0].contiguous(), kv.k_cache, kv.v_cache, seq_lens,
                                               self.decode_block_table, scale, kv.layout, sliding_window,
                                               softcap)
        return out.unsqueeze(1)

    def _attend(self, q, k, v, attn_mask, layer_idx, scale, sliding_window, softcap) -> torch.Tensor:
        if layer_idx in self._step_layers or self._step is None:
            self._step_layers = set()
            self._begin_step(q, attn_mask, layer_idx, sliding_window)
        self._step_layers.add(layer_idx)
        md, token_index = self._step
        B, Hq, S, D = q.shape
        Hkv = k.shape[1]
        qt = q.transpose(1, 2).reshape(B * S, Hq, D).index_select(0, token_index)
        kt = k.transpose(1, 2).reshape(B * S, Hkv, D).index_select(0, token_index)
        vt = v.transpose(1, 2).reshape(B * S, Hkv, v.shape[-1]).index_select(0, token_index)
        out_t = paged_attention(qt, kt, vt, self.kv[layer_idx], md.query_start_loc, md.seq_lens, md.block_table,
                                md.slot_mapping, scale=scale, backend=self.backend,
                                sliding_window=sliding_window or None, softcap=softcap or None, metadata=md)
        out = q.new_zeros(B * S, Hq, v.shape[-1])
        out.index_copy_(0, token_index, out_t.to(q.dtype))
        return out.view(B, S, Hq, v.shape[-1])


def _check_mask_matches(real: torch.Tensor, visible: torch.Tensor, sees_next: torch.Tensor, cached: list[int],
                        window: int, layer_idx: int) -> None:
    """The paged path attends, for each real new token of row b, the row's cached tokens and its new ones up to
    itself (the last `window` of them with a window). Refused rather than attended differently from HF, where
    HF's mask shows the step's last token, when real (visible[b]: the count of keys it shows):
    - fewer keys: it hides tokens already cached (a later call masking out what an earlier one cached), or
      applies a window the attention function was not given;
    - more keys than the window where the row holds more than the window (HF's mask has none there, or a
      wider one);
    or shows any real token the next position (sees_next: a bidirectional span, e.g. image tokens).
    Keys the mask shows that the cache never held (padding that a later call's mask marks real) are not
    attended: that padding was never cached. real: [B, S] bool; sees_next: [B, S - 1] bool (token i sees
    position i + 1); visible: [B]."""
    n = torch.tensor(cached) + real.sum(1)  # the tokens the step's last token attends, before any window
    expected = n.clamp(max=window) if window else n
    bidirectional = (real[:, :-1] & sees_next).any(1)
    wrong_count = visible < expected
    if window:
        wrong_count |= (n > window) & (visible > window)
    bad = bidirectional | (real[:, -1] & wrong_count)  # a row ending in padding (right padding): no count
    if bad.any():
        b = int(bad.nonzero()[0])
        what = ("a later position (a bidirectional span)" if bidirectional[b] else
                f"{int(visible[b])} keys where the paged cache attends {int(expected[b])} ({cached[b]} cached "
                f"tokens, window {window or 'none'})")
        raise ValueError(
            f"RocmAttnCache: layer {layer_idx}, row {b}: HF's attention mask shows the step's last token {what}. "
            "The paged cache attends causally, cannot un-cache tokens (a later call that masks out positions "
            "an earlier call cached) and applies only the window the attention function is given; pass "
            "past_key_values=transformers.DynamicCache() to run on HF's cache with its mask")


_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@custom_op("hf_paged_attention", mutates_args=(), tags=_TAGS)
def hf_paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                       cache_id: int, layer_idx: int, scale: float, sliding_window: int,
                       softcap: float) -> torch.Tensor:
    """HF-layout paged attention on a live RocmAttnCache: q [B,Hq,S,D], k/v [B,Hkv,S,D] (new tokens only)
    -> out [B,S,Hq,Dv]. Writes the new K/V into the cache (state held outside the graph)."""
    cache = _LIVE_CACHES.get(cache_id)
    if cache is None:
        raise RuntimeError(f"rocm_attn.hf_paged_attention: RocmAttnCache {cache_id} no longer exists")
    return cache._attend(q, k, v, attn_mask, layer_idx, scale, sliding_window, softcap)


@hf_paged_attention.register_fake
def _(q, k, v, attn_mask, cache_id, layer_idx, scale, sliding_window, softcap):
    B, Hq, S, _ = q.shape
    return q.new_empty((B, S, Hq, v.shape[-1]))


# ----------------------------------------------------------------------------- the attention function


def rocm_attn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: query [B,Hq,S,D], key/value [B,Hkv,Skv,D] -> ([B,S,Hq,Dv], None)."""
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    softcap = float(kwargs.get("softcap") or 0.0)
    cache = kwargs.get(CACHE_KWARG)
    if kwargs.get("s_aux") is not None:  # patch() refuses such models; never ignore the sinks silently
        raise NotImplementedError("rocm_attn attention: attention sinks (s_aux, e.g. GPT-OSS) are not supported")
    if dropout and dropout > 0.0 or kwargs.get("output_attentions"):
        # training-time dropout / attention weights: not what these kernels do; HF's sdpa/eager is exact
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if cache is not None or softcap:
            if kwargs.get("output_attentions"):
                raise NotImplementedError(
                    "rocm_attn attention: output_attentions=True is not supported with softcap or the paged "
                    "RocmAttnCache (the kernels return no attention weights); use an unpatched model loaded "
                    "with attn_implementation='eager'")
            raise NotImplementedError("rocm_attn attention: dropout is not supported with softcap or the paged "
                                      "RocmAttnCache; call model.eval() for inference")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if isinstance(cache, RocmAttnCache):
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        if query.shape[2] == 1 and cache.holds_tokens and cache.decode_block_table is not None:
            # a decode step on a cache that already holds the prompt: the device path
            out = cache.decode_step(query, key, value, int(module.layer_idx), scale, int(window or 0), softcap)
            return out, None
        out = torch.ops.rocm_attn.hf_paged_attention(query, key, value, attention_mask, cache.cache_id,
                                                     int(module.layer_idx), scale, int(window or 0), softcap)
        return out, None
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(attention_mask is None and is_causal and query.shape[2] > 1)
    out = torch.ops.rocm_attn.flash_attention(query, key, value, attention_mask, scale, causal, 0, softcap)
    return out.transpose(1, 2), None


def register_hf_attention() -> None:
    """Register ``"rocm_attn"`` with transformers' AttentionInterface and AttentionMaskInterface (the mask
    is SDPA's: a 4-D bool mask, or None for plain causal)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, rocm_attn_attention)
    AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def pass_cache_to_attention(module, args, kwargs):
    """Forward pre-hook: hand ``past_key_values`` to the attention functions (kwarg ``rocm_attn_cache``)."""
    cache = kwargs.get("past_key_values")
    if isinstance(cache, RocmAttnCache) and CACHE_KWARG not in kwargs:
        kwargs = dict(kwargs)
        kwargs[CACHE_KWARG] = cache
        return args, kwargs
    return None
