"""HF DeepseekV3 attention (MLA) -> rocm_attn's MLA backends.

What HF's ``DeepseekV3Attention.forward`` computes, and how it maps to ``mla_attention``:

    q        = q_b_proj(q_a_layernorm(q_a_proj(h)))  (or q_proj(h))  -> [.., H, nope + R] -> split nope / rope
    kv_c,k_pe= split(kv_a_proj_with_mqa(h), [L, R]);  kv_c = kv_a_layernorm(kv_c)
    q_pe,k_pe= rope(q_pe, k_pe)            (interleaved when config.rope_interleave)
    K, V     = kv_b_proj(kv_c) split per head (+ k_pe broadcast to every head)   <- the latent cache stores
    out      = o_proj(attention(q, K, V, causal, scale = module.scaling))          [kv_c, k_pe] instead

``mla_inputs`` runs the first four lines with the module's own submodules and rope function (token-
packed), ``mla_module_forward`` runs the whole layer through ``mla_attention`` over a paged latent
cache (the engine / patch() path).

The torch.compile path (``is_site`` / ``rewrite``, tried before the generic SDPA pattern): in the graph
Dynamo records, HF's ``expand_kv`` is

    kv = linear(kv_c [B,1,Sk,L], W_kv_b).view(B, 1, Sk, H, P+V).transpose(1, 2);  k_nope, v = split(kv, [P, V])
    k = kv.new_empty(B, H, Sk, P+R);  k[..., :P].copy_(k_nope);  k[..., P:].copy_(k_pe.expand(-1, H, -1, -1))
    out = scaled_dot_product_attention(q, k, v, attn_mask, scale=s, is_causal=c)

-> ``mla_attention_dense(q, kv_c, k_pe, w_uk, w_uv_t, attn_mask, s, c)`` with w_uk / w_uv_t cut from the
kv_b_proj weight once, at compile time (graph constants). Decode-sized queries then run in the latent
space (the latents are read once for all heads); longer ones up-project and use flash_attention.
The site is reported with pattern "mla".
"""

from __future__ import annotations

import operator
import sys

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..kernels.mla_attention import MLAWeights, mla_attention, mla_weights_for
from .attention_common import check_mask
from .graph_utils import add_constant, arg, erase_if_unused, is_call, is_method, is_number, parameter_of, \
    statically_equal, value

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


# ---------------------------------------------------------------- the torch.compile rewrite

def _getitem_of(node, index):
    """node = source[index] (the output of a split) -> source, else None."""
    if is_call(node, operator.getitem) and node.args[1] == index:
        return node.args[0]
    return None


def _structure(node: fx.Node):
    """Walk HF's expand_kv back from an SDPA call -> dict of the pieces, or a reason string."""
    q, k, v = arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")
    is_cat = is_call(k, torch.cat) and isinstance(k.args[0], (list, tuple)) and len(k.args[0]) == 2 \
        and k.kwargs.get("dim", k.args[1] if len(k.args) > 1 else 0) in (-1, 3)
    if not ((is_method(k, "new_empty") or is_cat) and isinstance(v, fx.Node)):
        return "not MLA"
    split = _getitem_of(v, 1)
    if not is_call(split, torch.split, torch.functional.split) or len(split.args) < 2:
        return "not MLA"
    kv = split.args[0]
    if not is_method(kv, "transpose") or (not is_cat and k.args[0] is not kv):
        return "not MLA"
    view = kv.args[0]
    lin = view.args[0] if is_method(view, "view", "reshape") else None
    if not is_call(lin, F.linear, torch._C._nn.linear) or arg(lin, 2, "bias") is not None:
        return "not MLA"
    sizes = split.args[1]
    if not (isinstance(sizes, (list, tuple)) and len(sizes) == 2 and all(isinstance(x, int) for x in sizes)):
        return "not MLA"
    P, V = sizes
    # k = cat((k_nope, k_pe.expand(..)), -1), or (HF 5.x) two copies into k:
    # k[..., :P].copy_(k_nope) and k[..., P:].copy_(k_pe.expand(..))
    copies, pe_expand, chain = {}, None, []
    if is_cat:
        copies = {"nope": k.args[0][0], "pe": k.args[0][1]}
        if len(k.users) != 1:
            return "key_states has other users"
    for user in ([] if is_cat else k.users):
        if user is node:
            continue
        if not is_call(user, operator.getitem) or len(user.users) != 1:
            return "key_states has other users"
        cp = next(iter(user.users))
        if not is_method(cp, "copy_") or cp.args[0] is not user:
            return "key_states has other users"
        idx = user.args[1]
        sl = idx[-1] if isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis else None
        if sl == slice(None, P, None):
            copies["nope"] = cp.args[1]
        elif sl == slice(P, None, None):
            copies["pe"] = cp.args[1]
        else:
            return "key_states written in an unexpected way"
        chain += [cp, user]
    if set(copies) != {"nope", "pe"} or _getitem_of(copies["nope"], 0) is not split:
        return "key_states not built from kv_b_proj's output"
    pe_expand = copies["pe"]
    if not is_method(pe_expand, "expand") or not isinstance(pe_expand.args[0], fx.Node):
        return "k_pe is not a broadcast of the shared rope key"
    k_pe, kv_c, weight = pe_expand.args[0], lin.args[0], lin.args[1]
    chain += [k, copies["nope"], v, split, kv, view, lin, pe_expand]
    return dict(q=q, kv_c=kv_c, k_pe=k_pe, weight=weight, P=P, V=V, chain=chain)


def is_site(node: fx.Node) -> bool:
    return is_call(node, F.scaled_dot_product_attention) and isinstance(_structure(node), dict)


def rewrite(gm: fx.GraphModule, node: fx.Node, example_inputs) -> str | tuple[str, dict]:
    """Replace one MLA site; returns (how, detail) or the reason it stays as HF wrote it."""
    st = _structure(node)
    mask, dropout = arg(node, 3, "attn_mask"), arg(node, 4, "dropout_p", 0.0)
    causal, scale = arg(node, 5, "is_causal", False), arg(node, 6, "scale")
    if not is_number(dropout) or dropout != 0:
        return f"dropout_p={dropout} (only 0 is rewritten)"
    if not isinstance(causal, bool) or (scale is not None and not is_number(scale)):
        return "is_causal / scale not constants"
    qv, cv, pv = value(st["q"]), value(st["kv_c"]), value(st["k_pe"])
    if qv is None or cv is None or pv is None or cv.dim() != 4 or pv.dim() != 4 or cv.shape[1] != 1:
        return "latents are not [B, 1, Sk, *] with known shapes"
    if qv.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (qv.dtype == cv.dtype == pv.dtype):
        return f"dtype {qv.dtype} / {cv.dtype} / {pv.dtype} not supported"
    if any(t.requires_grad for t in (qv, cv, pv)):
        return "needs autograd (training); run under torch.no_grad()"
    reason = check_mask(mask)
    if reason:
        return reason
    if causal and (mask is not None or not statically_equal(qv.shape[2], cv.shape[2])):
        return "is_causal=True with a mask or Sq != Sk"
    weight = parameter_of(st["weight"], gm, example_inputs)
    if weight is None:
        return "kv_b_proj's weight is not a parameter"
    if weight.element_size() == 1 or not weight.is_floating_point():
        return "kv_b_proj's weight is quantized (keep kv_b_proj in bf16 for MLA)"
    H, D = qv.shape[1], qv.shape[3]
    if weight.shape != (H * (st["P"] + st["V"]), cv.shape[3]) or D != st["P"] + pv.shape[3]:
        return "kv_b_proj's weight does not match the heads / head dims"
    with torch.no_grad():  # absorption, once per compile
        w = MLAWeights.from_kv_b_proj(weight.to(qv.dtype), H, st["P"], st["V"])
    graph = gm.graph
    name = str(st["weight"].target if st["weight"].op == "get_attr" else st["weight"].name)
    uk = add_constant(gm, f"mla_w_uk_{name}", w.w_uk, [st["weight"]])
    uv = add_constant(gm, f"mla_w_uv_t_{name}", w.w_uv_t, [st["weight"]])
    scale = float(scale) if scale is not None else qv.shape[-1] ** -0.5
    with graph.inserting_before(node):
        uk_node, uv_node = graph.get_attr(uk), graph.get_attr(uv)
        new = graph.call_function(torch.ops.rocm_attn.mla_attention_dense.default,
                                  (st["q"], st["kv_c"], st["k_pe"], uk_node, uv_node, mask, scale, causal))
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    erase_if_unused(graph, [node] + st["chain"])
    detail = {"heads": H, "kv_lora_rank": cv.shape[3], "rope": pv.shape[3], "nope": st["P"], "v": st["V"],
              "mask": "none" if mask is None else str(value(mask).dtype).replace("torch.", "")}
    return f"mla_attention_dense(causal={causal}, scale={scale:.4g}; absorbed when Sq <= 16)", detail
