"""HF's eager_attention_forward, as Dynamo records it:

    s = torch.matmul(q, repeat_kv(k).transpose(2, 3)) [* scaling | / d]
    [s = tanh(s / softcap) * softcap]                       (Gemma 2)
    [s = s + attention_mask]
    p = softmax(s, dim=-1[, dtype=float32]) [.to(q.dtype) | .type(v.dtype)]
    [p = dropout(p, p=0.0 | training=False)]
    out = torch.matmul(p, repeat_kv(v))

-> flash_attention(q, k, v, attention_mask, scaling, False, 0, softcap) (a mask padding_mask.py proves to
be HF's padding mask becomes key_valid + flags in the rewrite). A site is any matmul fed
by a softmax; when the rest of the chain is not exactly this, it stays and the reason is reported.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .attention_common import AttentionMatch, check_mask, check_tensors, undo_repeat_kv
from .graph_utils import arg, is_call, is_method, is_number, value

NAME = "eager"
MATMULS = (torch.matmul, operator.matmul)


def _softmax_of(node):
    """Walk back from the second matmul's first input through dropout/cast to a softmax."""
    chain = []
    n = node
    for _ in range(4):
        if is_call(n, F.dropout):
            chain.append(n)
            n = n.args[0]
        elif is_method(n, "to", "type", "float", "half", "bfloat16"):
            chain.append(n)
            n = n.args[0]
        else:
            break
    if is_call(n, F.softmax, torch.softmax) or is_method(n, "softmax"):
        return n, chain + [n]
    return None, chain


def is_site(node: fx.Node) -> bool:
    return (
        is_call(node, *MATMULS)
        and isinstance(node.args[0], fx.Node)
        and _softmax_of(node.args[0])[0] is not None
    )


def _dropout_reason(chain) -> str | None:
    for n in chain:
        if is_call(n, F.dropout):
            p = arg(n, 1, "p", 0.5)
            training = arg(n, 2, "training", True)
            if not (is_number(p) and p == 0) and training is not False:
                return f"dropout p={p} training={training} (only p=0 or eval is rewritten)"
    return None


def _is_last_dim(node, dim) -> bool:
    v = value(node)
    return dim == -1 or (v is not None and dim == v.dim() - 1)


def match(node: fx.Node) -> AttentionMatch | str:
    softmax, chain = _softmax_of(node.args[0])
    reason = _dropout_reason(chain)
    if reason:
        return reason
    dim = arg(softmax, 1, "dim")
    if not _is_last_dim(softmax.args[0], dim):
        return f"softmax over dim {dim}, not the last"
    s = softmax.args[0]
    mask = None
    if is_call(s, operator.add, torch.add):
        a, b = s.args[0], s.args[1]
        chain.append(s)
        s, mask = (a, b) if _leads_to_scores(a) else (b, a)
        if not isinstance(mask, fx.Node):
            return "softmax input is scores + a non-tensor"
    softcap = 0.0
    if is_call(s, operator.mul) and (is_method(s.args[0], "tanh") or is_call(s.args[0], torch.tanh)):
        tanh, cap = s.args
        inner = tanh.args[0]
        if not (is_number(cap) and is_call(inner, operator.truediv) and inner.args[1] == cap):
            return "tanh soft-capping not of the form tanh(s / c) * c"
        softcap = float(cap)
        chain += [s, tanh, inner]
        s = inner.args[0]
    scale = 1.0
    if is_call(s, operator.mul, operator.truediv) and is_number(s.args[1]):
        scale = float(s.args[1]) if s.target is operator.mul else 1.0 / float(s.args[1])
        chain.append(s)
        s = s.args[0]
    if not is_call(s, *MATMULS):
        return (
            f"scores come from {s.target if isinstance(s, fx.Node) else s!r}, not q @ k^T (unknown variant)"
        )
    chain.append(s)
    q, kt = s.args[0], s.args[1]
    if not (is_method(kt, "transpose") and sorted(_norm_dims(kt)) == [2, 3]):
        return "scores are not q @ k.transpose(-2, -1)"
    chain.append(kt)
    k0, k_chain = undo_repeat_kv(kt.args[0])
    v0, v_chain = undo_repeat_kv(node.args[1])
    if bool(k_chain) != bool(v_chain):
        return "only one of k/v is repeated"
    for n in chain:
        if len(n.users) > 1:
            return f"intermediate {n.name} is used elsewhere (attention weights returned?)"
    reason = check_tensors(q, k0, v0, node) or check_mask(mask)
    if reason:
        return reason
    if not scale > 0:
        return f"scale {scale} is not positive"
    return AttentionMatch(
        NAME,
        node,
        q,
        k0,
        v0,
        mask,
        scale,
        False,
        softcap=softcap,
        chain=[node] + chain + k_chain + v_chain,
        detail={
            "gqa": "repeat_kv undone" if k_chain else "none",
            "softcap": softcap,
            "mask": "none" if mask is None else str(value(mask).dtype).replace("torch.", ""),
        },
    )


def _norm_dims(transpose: fx.Node):
    v = value(transpose)
    nd = v.dim() if v is not None else 4
    return [d % nd for d in transpose.args[1:3] if isinstance(d, int)]


def _leads_to_scores(n) -> bool:
    """True when n is (scaled / soft-capped) q @ k^T rather than the mask."""
    for _ in range(5):
        if is_call(n, *MATMULS):
            return True
        if not isinstance(n, fx.Node) or not n.args or not isinstance(n.args[0], fx.Node):
            return False
        n = n.args[0]
    return False
