"""HF DeepseekV3 attention (MLA) -> rocm_attn's MLA backends.

What HF's ``DeepseekV3Attention.forward`` computes, and how it maps to ``mla_attention``:

    q        = q_b_proj(q_a_layernorm(q_a_proj(h)))  (or q_proj(h))  -> [.., H, nope + R] -> split nope / rope
    kv_c,k_pe= split(kv_a_proj_with_mqa(h), [L, R]);  kv_c = kv_a_layernorm(kv_c)
    q_pe,k_pe= rope(q_pe, k_pe)            (interleaved when config.rope_interleave)
    K, V     = kv_b_proj(kv_c) split per head (+ k_pe broadcast to every head)   <- the latent cache stores
    out      = o_proj(attention(q, K, V, causal, scale = module.scaling))          [kv_c, k_pe] instead

``mla_inputs`` runs the first four lines with the module's own submodules and rope function (token-
packed), ``mla_module_forward`` runs the whole layer through ``mla_attention`` over a paged latent
cache (the engine / patch() path). ``is_mla_module`` is what the rewrite report uses to count MLA sites.
"""

from __future__ import annotations

import sys

import torch

from ..kernels.mla_attention import mla_attention, mla_weights_for

NAME = "mla"
_REQUIRED = ("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj", "kv_lora_rank", "qk_rope_head_dim",
             "qk_nope_head_dim", "v_head_dim", "num_heads", "scaling")


def is_mla_module(module) -> bool:
    """A HF attention module laid out like DeepseekV3Attention (DeepSeek-V3, Kimi K2, ...)."""
    return isinstance(module, torch.nn.Module) and all(hasattr(module, a) for a in _REQUIRED)


def _rope_fn(module):
    mod = sys.modules.get(type(module).__module__)
    interleave = bool(getattr(module.config, "rope_interleave", False))
    fn = getattr(mod, "apply_rotary_pos_emb_interleave" if interleave else "apply_rotary_pos_emb", None)
    if fn is None:
        raise NotImplementedError(f"rocm_attn MLA: {type(module).__name__}'s module has no "
                                  f"{'interleaved ' if interleave else ''}rotary function; only DeepseekV3-style "
                                  "attention is supported")
    return fn


def mla_inputs(module, hidden_states: torch.Tensor, position_embeddings):
    """hidden_states [T, hidden] (token-packed), (cos, sin) [T, R] of each token's position ->
    q [T, H, nope + R] (rope applied), kv_c [T, L] (normed), k_pe [T, R] (rope applied)."""
    if not is_mla_module(module):
        raise NotImplementedError(f"rocm_attn MLA: {type(module).__name__} is not a DeepseekV3-style MLA module")
    T = hidden_states.shape[0]
    P, R, L = module.qk_nope_head_dim, module.qk_rope_head_dim, module.kv_lora_rank
    h = hidden_states[None]  # [1, T, hidden]: HF's shapes
    if getattr(module, "q_lora_rank", None) is None:
        q = module.q_proj(h)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(h)))
    q = q.view(1, T, module.num_heads, P + R).transpose(1, 2)  # [1, H, T, P+R]
    q_nope, q_pe = q[..., :P], q[..., P:]
    kv_c, k_pe = torch.split(module.kv_a_proj_with_mqa(h), [L, R], dim=-1)
    kv_c = module.kv_a_layernorm(kv_c)
    cos, sin = position_embeddings
    q_pe, k_pe = _rope_fn(module)(q_pe, k_pe.view(1, 1, T, R), cos.view(1, T, -1), sin.view(1, T, -1))
    q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)[0]  # [T, H, P+R]
    return q, kv_c.reshape(T, L), k_pe.reshape(T, R)


def mla_module_forward(module, hidden_states, position_embeddings, mla_cache, query_start_loc, seq_lens,
                       block_table, slot_mapping, backend="TRITON_MLA", metadata=None, workspace=None):
    """The whole attention layer (projections, paged MLA attention, o_proj) on token-packed hidden states
    [T, hidden] -> [T, hidden]. Writes the new tokens' latents into ``mla_cache``."""
    q, kv_c, k_pe = mla_inputs(module, hidden_states, position_embeddings)
    dtype = mla_cache.dtype
    out = mla_attention(q.to(dtype), kv_c.to(dtype), k_pe.to(dtype), mla_cache, mla_weights_for(module),
                        query_start_loc, seq_lens, block_table, slot_mapping, scale=float(module.scaling),
                        backend=backend, metadata=metadata, workspace=workspace)
    return module.o_proj(out.reshape(out.shape[0], -1).to(hidden_states.dtype))
