"""Hugging Face continuous batching on a patched model: ``model.generate_batch(...)``.

    model = rocm_attn.patch(model)
    outputs = model.generate_batch([ids_0, ids_1, ...], generation_config=GenerationConfig(max_new_tokens=64),
                                   continuous_batching_config=ContinuousBatchingConfig(num_blocks=...))

Transformers' continuous batching (CB) takes only ``paged|eager``, ``sdpa`` or an attention implementation
whose name contains "flash". So ``patch()`` registers a second attention function, ``rocm_attn_flash``
(``paged|rocm_attn_flash`` on transformers that still use the ``paged|`` prefix), and wraps the model's
``init_continuous_batching`` (``generate_batch`` and ``continuous_batching_context_manager`` go through it):
while a CB manager runs, the model uses that name; ``manager.stop()`` restores ``rocm_attn``. The name is set
on the configs directly: ``set_attn_implementation`` would look a "flash" name up as a hub kernel.

What each CB step runs: HF packs the scheduled requests into one batch of tokens (new prompts, prompt chunks
and one-token decodes side by side) and passes ``cu_seq_lens_q``, ``cu_seq_lens_k`` and the slots of its
paged cache (``write_index``: the new tokens, ``read_index``: every token each request attends to). The
function below turns these into rocm_attn's metadata (query_start_loc, seq_lens, block_table, slot_mapping)
and calls ``rocm_attn.attention()``: new K/V are written into HF's own cache tensors, viewed as a rocm_attn
``KVCache`` of HF's pages (standard layout, or the shuffled one for ROCM_AITER_FA: the bytes of each page
are ours to arrange, HF only ever copies whole blocks), and each sequence takes the backend's decode /
extend / prefill path. HF's scheduler, block allocation, prefix sharing and sampling are unchanged.

Limits (each a clear error): full-attention models only (no sliding-window or hybrid layers); no CUDA
graphs (the metadata is built on the host each step; the CB config gets ``use_cuda_graph=False``).
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass, field

import torch

from .hf_cache import layout_for_backend
from .kernels.attention import attention as paged_attention
from .kernels.attention_metadata import metadata_from_tensors
from .kernels.kv_cache import KVCache, shuffle_x

log = logging.getLogger("rocm_attn")

CB_ATTN_NAME = "rocm_attn_flash"


@dataclass
class ContinuousBatchingStats:
    """What the rocm_attn attention did under continuous batching (``model.rocm_attn_cb_stats``)."""

    backend: str
    steps: int = 0  # forward steps
    mixed_steps: int = 0  # steps with decodes and prefills / extends in one batch
    split_totals: dict = field(default_factory=lambda: {"decode": 0, "extend": 0, "prefill": 0})


def cb_attn_name() -> str:
    """The name CB accepts: transformers <= 5.17 keeps paged functions under a ``paged|`` prefix (its manager
    would rename any other name to ``paged|<name>``); later versions dropped the prefix."""
    from transformers import AttentionInterface

    return f"paged|{CB_ATTN_NAME}" if "paged|sdpa" in AttentionInterface._global_mapping else CB_ATTN_NAME


def enable_continuous_batching(model, attn_modules, backend: str, dense_name: str) -> None:
    """Called by ``patch()``: register the CB attention function and wrap ``init_continuous_batching``."""
    from transformers import AttentionInterface

    # no mask function for this name: HF then builds no mask (the sequences are given by cu_seq_lens)
    AttentionInterface.register(CB_ATTN_NAME, rocm_attn_cb_attention)
    AttentionInterface.register(f"paged|{CB_ATTN_NAME}", rocm_attn_cb_attention)
    stats = ContinuousBatchingStats(backend)
    for _, mod in attn_modules:
        mod._rocm_attn_cb_stats = stats
    model.rocm_attn_cb_stats = stats
    original = getattr(model, "init_continuous_batching", None)
    if original is None:
        return  # a transformers without continuous batching

    @functools.wraps(original)
    def init_continuous_batching(
        generation_config=None, continuous_batching_config=None, workload_hints=None
    ):
        _check_full_attention(model)
        cb_config = _cb_config_without_cuda_graphs(model, generation_config, continuous_batching_config)
        switched = model.config._attn_implementation == dense_name
        if switched:
            _set_attn_name(model, cb_attn_name())
        try:
            manager = original(
                generation_config=generation_config,
                continuous_batching_config=cb_config,
                workload_hints=workload_hints,
            )
        except BaseException:
            if switched:
                _set_attn_name(model, dense_name)
            raise
        if switched and getattr(manager, "_original_attn_impl", None) is None:
            manager._original_attn_impl = dense_name  # manager.stop() sets it back
        return manager

    model.init_continuous_batching = init_continuous_batching


def _set_attn_name(model, name: str) -> None:
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name


def _check_full_attention(model) -> None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(cfg, "layer_types", None)
    kinds = (
        set(layer_types)
        if layer_types
        else {"sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"}
    )
    if kinds != {"full_attention"}:
        raise NotImplementedError(
            f"rocm_attn: continuous batching on {type(model).__name__} with layer types {sorted(kinds)} is "
            "not supported (full attention only); use model.generate() with the paged RocmAttnCache instead"
        )


def _cb_config_without_cuda_graphs(model, generation_config, cb_config):
    from transformers import ContinuousBatchingConfig

    if cb_config is None:  # HF's deprecated place for it, else its default
        gen = generation_config if generation_config is not None else model.generation_config
        cb_config = getattr(gen, "continuous_batching_config", None)
        if not isinstance(cb_config, ContinuousBatchingConfig):
            cb_config = ContinuousBatchingConfig()
    use = getattr(cb_config, "use_cuda_graph", None)
    if use is not None and any(use if isinstance(use, (tuple, list)) else (use,)):
        raise ValueError(
            "rocm_attn: continuous batching with use_cuda_graph is not supported (the attention "
            "metadata is built on the host each step); leave use_cuda_graph unset or False"
        )
    cb_config = copy.deepcopy(cb_config)
    cb_config.use_cuda_graph = False
    return cb_config


# ----------------------------------------------------------------- HF's paged cache, as rocm_attn sees it


def _hf_pages(cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(k_pages, v_pages [num_pages, page_size, Hkv, D], page_size, group) of one layer of HF's
    PagedAttentionCache. HF's slot numbers (write_index / read_index) index these pages token by token."""
    # transformers 5.2x: one allocator per attention type; 5.17: one cache tensor per layer of a group
    allocator = getattr(cache, "layer_to_allocator", {}).get(layer_idx)
    if hasattr(allocator, "get_cache_for_block_table") and hasattr(allocator, "tokens_per_page"):
        k_pages, v_pages = allocator.get_cache_for_block_table(layer_idx)
        return k_pages, v_pages, int(allocator.tokens_per_page), int(allocator.index)
    if hasattr(cache, "layer_index_to_group_indices") and hasattr(cache, "key_cache"):
        group, in_group = cache.layer_index_to_group_indices[layer_idx]
        bs, hkv, d = cache.block_size, cache.num_key_value_heads, cache.head_dim
        k_pages = cache.key_cache[in_group].view(-1, bs, hkv, d)
        v_pages = cache.value_cache[in_group].view(-1, bs, hkv, d)
        return k_pages, v_pages, int(bs), int(group)
    raise NotImplementedError(
        f"rocm_attn: this transformers' PagedAttentionCache ({type(cache).__module__}) has neither "
        "allocators with page views nor key_cache/layer_index_to_group_indices; continuous batching on a "
        "patched model supports the caches of transformers 5.17 to 5.23"
    )


class _PagesAsKVCache(KVCache):
    """A rocm_attn KVCache over HF's page tensors (no copy, no allocator: HF allocates the blocks)."""

    def __init__(self, k_pages: torch.Tensor, v_pages: torch.Tensor, layout: str):
        num_pages, page_size, hkv, d = k_pages.shape
        if not (k_pages.is_contiguous() and v_pages.is_contiguous()):
            raise NotImplementedError("rocm_attn: HF's paged cache pages are not contiguous tensors")
        x = shuffle_x(k_pages.dtype)
        if layout == "shuffled":
            if d % x or page_size % x:
                raise ValueError(
                    f"rocm_attn: the shuffled layout needs head_dim and page_size multiples of {x}; "
                    f"got head_dim={d}, page_size={page_size}"
                )
            # same bytes per page, arranged as rocm_attn's shuffled blocks
            k_pages = k_pages.view(num_pages, hkv, d // x, page_size, x)
            v_pages = v_pages.view(num_pages, hkv, page_size // x, d, x)
        self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim = num_pages, page_size, hkv, d
        self.dtype, self.layout, self.x, self.device = k_pages.dtype, layout, x, k_pages.device
        self.k_cache, self.v_cache, self.allocator = k_pages, v_pages, None


@dataclass
class _Step:
    """One forward step's metadata (the same for every layer of the one full-attention group)."""

    cu_q: torch.Tensor  # HF's tensor for this step, held so that `is` identifies the step
    metadata: object
    num_tokens: int


def _pick(kwargs: dict, *names):
    for name in names:
        if name in kwargs:
            return kwargs[name]
    raise NotImplementedError(
        f"rocm_attn: continuous batching passed no {' / '.join(names)} to the attention "
        f"function (kwargs: {sorted(kwargs)}); this transformers version is not supported"
    )


def _step_metadata(kwargs: dict, page_size: int, group: int, device: torch.device) -> _Step:
    """HF's packed-batch kwargs -> rocm_attn metadata. Sequence b has new tokens cu_q[b]:cu_q[b+1] and reads
    keys 0..seq_lens[b]-1; HF's read_index lists the slots of those keys sequence after sequence (or, when no
    sequence has cached tokens, HF sends no reads and write_index lists them)."""
    cu_q = _pick(kwargs, "cu_seq_lens_q")
    cu_k = _pick(kwargs, "cu_seq_lens_k")
    if isinstance(cu_k, dict):
        cu_k = cu_k["full_attention"]
    write = _pick(kwargs, "write_index")[group]
    read = _pick(kwargs, "read_index")[group]
    q_lens = (cu_q[1:] - cu_q[:-1]).tolist()
    k_lens = (cu_k[1:] - cu_k[:-1]).tolist()
    keep = [b for b, n in enumerate(q_lens) if n > 0]  # padding sequences (static shapes) have no tokens
    num_tokens = int(cu_q[-1])
    if not read.numel() and any(k_lens[b] != q_lens[b] for b in keep):
        raise NotImplementedError("rocm_attn: HF sent no read_index for a batch with cached tokens")
    slots, starts = (read, cu_k) if read.numel() else (write, cu_q)
    starts = starts[:-1].to(device=device, dtype=torch.int64)[keep]
    seq_lens = torch.tensor([k_lens[b] for b in keep], dtype=torch.int32, device=device)
    blocks = [-(-k_lens[b] // page_size) for b in keep]
    width = max(blocks, default=1)
    col = torch.arange(width, device=device)
    used = col[None, :] < torch.tensor(blocks, device=device)[:, None]
    first_token_of_block = torch.where(used, starts[:, None] + col[None, :] * page_size, 0)
    block_table = torch.where(used, slots.to(device)[first_token_of_block] // page_size, 0).to(torch.int32)
    query_start_loc = torch.tensor([0] + [q_lens[b] for b in keep], device=device).cumsum(0).to(torch.int32)
    slot_mapping = write[:num_tokens].to(device=device, dtype=torch.int64)
    md = metadata_from_tensors(query_start_loc, seq_lens, block_table, slot_mapping, page_size)
    return _Step(cu_q, md, num_tokens)


def _count(stats: ContinuousBatchingStats, md) -> None:
    stats.steps += 1
    stats.mixed_steps += int(md.num_decodes > 0 and md.num_extends + md.num_prefills > 0)
    for kind in stats.split_totals:
        stats.split_totals[kind] += getattr(md, f"num_{kind}s")


@torch.compiler.disable  # host-side metadata and HF's cache views; the kernels inside are ops
def rocm_attn_cb_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function under continuous batching: query [1, Hq, T, D], key/value [1, Hkv, T, D] (the
    new tokens of every scheduled request, packed) -> ([1, T, Hq, Dv], None)."""
    from transformers.generation.continuous_batching import PagedAttentionCache

    cache = kwargs.get("cache")
    if not isinstance(cache, PagedAttentionCache):
        raise RuntimeError(
            f"rocm_attn: the model's attention is {CB_ATTN_NAME!r} (continuous batching) but this "
            "call has no PagedAttentionCache; stop the continuous batching manager first (it "
            "restores 'rocm_attn')"
        )
    if getattr(module, "sliding_window", None) or kwargs.get("sliding_window"):
        raise NotImplementedError(
            "rocm_attn: sliding-window layers are not supported under continuous batching"
        )
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("rocm_attn: attention sinks (s_aux) are not supported")
    if dropout:
        raise NotImplementedError(
            "rocm_attn: dropout is not supported under continuous batching (call model.eval())"
        )
    stats = getattr(module, "_rocm_attn_cb_stats", None)
    if stats is None:
        raise RuntimeError(f"rocm_attn: {type(module).__name__} was not set up by rocm_attn.patch()")
    layer = int(module.layer_idx)
    views = cache.__dict__.setdefault("_rocm_attn_kv", {})  # layer -> (KVCache view, page_size, group)
    if layer not in views:
        k_pages, v_pages, page_size, group = _hf_pages(cache, layer)
        views[layer] = (
            _PagesAsKVCache(k_pages, v_pages, layout_for_backend(stats.backend)),
            page_size,
            group,
        )
    kv, page_size, group = views[layer]
    step = getattr(cache, "_rocm_attn_step", None)
    if step is None or step.cu_q is not kwargs.get("cu_seq_lens_q"):
        step = _step_metadata(kwargs, page_size, group, query.device)
        cache._rocm_attn_step = step
        _count(stats, step.metadata)

    T, n = query.shape[2], step.num_tokens
    q, k, v = (t[0].transpose(0, 1)[:n].to(kv.dtype).contiguous() for t in (query, key, value))
    md = step.metadata
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap") or None
    out = paged_attention(
        q,
        k,
        v,
        kv,
        md.query_start_loc,
        md.seq_lens,
        md.block_table,
        md.slot_mapping,
        scale=scale,
        backend=stats.backend,
        softcap=softcap,
        metadata=md,
    )
    if n < T:  # padded tokens (static shapes): zeros, HF ignores them
        out = torch.cat([out, out.new_zeros(T - n, *out.shape[1:])])
    return out.to(query.dtype).unsqueeze(0), None
