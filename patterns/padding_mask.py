"""Is an attention site's 4-D mask only "causal (or bidirectional) AND key padding"? A proof on the graph.

transformers' masking_utils (sdpa_mask, non-vmap path; eager_mask wraps it) builds the mask from the 2-D
``attention_mask`` like this, and Dynamo records it node by node:

    pm          = attention_mask.to(device, dtype=bool)   [F.pad(pm, (0, n)) when short; GPT-2 .view()s first]
    b_idx       = arange(B)[:, None, None, None]
    q_idx       = (arange(Lq) + q_offset)[None, None, :, None]
    kv_idx      = (arange(Lk) + kv_offset)[None, None, None, :]
    result      = q_idx.new_ones((), dtype=bool) & term(...).to(device) & ...     (and_masks, nested)
    mask        = result.expand(B, -1, Lq, Lk)
    [eager:  mask = torch.where(mask, zeros(()) | tensor(0.0), finfo(dtype).min)]

with these terms, and no other:

    causal           kv_idx <= q_idx
    sliding window   kv_idx > q_idx - W          (only together with causal)
    bidirectional    q_idx >= 0                  (encoders)
    key padding      pm[b_idx, kv_idx]           (at most one)

Without an attention_mask and without a cache (a plain compiled forward), HF cannot tell under tracing
whether position_ids hold packed sequences, so it adds two more forms, built on the position rows P:

    packed sequences   psm[b_idx, q_idx] == psm[b_idx, kv_idx]
                       with psm = cumsum(diff(P, prepend=P[:, :1] - 1) != 1)
    remapped causal    P[b_idx, kv_idx] <= P[b_idx, q_idx]    (newer transformers; window: P[kv] > P[q] - W)

When P is provably one contiguous run (arange(n) + c, unsqueezed / expanded over the batch: what the model
makes from cache_position when the caller passes no position_ids), psm is all 0, so the packed term is always
true, and P[j] = j + c turns the remapped terms into the plain ones. position_ids passed by the caller are a
graph input, never proven: those masks keep the 4-D tensor.

When every node on the way has exactly this form, the mask is "key j of row b is valid" AND the
position rule, and flash_attention computes it from ``key_valid = pm[b_idx, kv_idx]`` (a [B, Sk] bool
vector, exact for any 0/1 attention_mask, holes included) with causal / sliding_window flags. The
flags use bottom-right positions (query i at Sk - Sq + i), so causal needs q_offset - kv_offset ==
Lk - Lq, proven from constants or symbolic sizes; a tensor offset (StaticCache) is not proven.

Anything else -- a user's 4-D mask, packed sequences (their position_ids / packed-sequence terms),
chunked attention, vmap-built masks, a term of unknown form -- gives the reason string instead, and
the caller keeps the 4-D mask. A wrong proof would be a silently wrong answer: every check is strict.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph_utils import GETITEM, is_call, is_method, is_number, statically_equal, value

ALL = slice(None, None, None)


@dataclass
class KeyPadding:
    attention_mask: fx.Node | None  # the attention_mask placeholder (None: no padding term)
    key_valid: fx.Node | None  # HF's own pm[b_idx, kv_idx]: bool [B, 1, 1, Sk]; None: every key valid
    causal: bool
    sliding_window: int  # 0 = none

    def describe(self) -> str:
        rule = "causal" if self.causal else "bidirectional"
        if self.sliding_window:
            rule += f", sliding window {self.sliding_window}"
        if self.key_valid is None:
            return f"no key padding ({rule}, proven from positions)"
        return f"key padding from attention_mask ({rule})"


def recognise(mask: fx.Node, q: fx.Node, k: fx.Node) -> KeyPadding | str:
    """KeyPadding when ``mask`` (feeding attention of q [B,Hq,Sq,D], k [B,Hkv,Sk,D]) is provably HF's
    causal / bidirectional mask AND key padding from a 2-D attention_mask, else why not."""
    bool_mask = _unwrap_eager(mask)
    if isinstance(bool_mask, str):
        return bool_mask
    if not (is_method(bool_mask, "expand") and isinstance(bool_mask.args[0], fx.Node)):
        return "not built by HF's sdpa_mask (no final expand)"
    mv, qv, kv = value(bool_mask), value(q), value(k)
    if mv is None or qv is None or kv is None or mv.dtype != torch.bool or mv.dim() != 4:
        return "no bool 4-D shape information"
    B, Sq, Sk = qv.shape[0], qv.shape[2], kv.shape[2]
    if not all(statically_equal(a, b) for a, b in zip(mv.shape, (B, 1, Sq, Sk), strict=True)):
        return f"mask shape {tuple(mv.shape)} is not [B, 1, Sq, Sk] = {[B, 1, Sq, Sk]}"

    terms = _and_terms(bool_mask.args[0])
    if isinstance(terms, str):
        return terms
    kinds, q_idx, kv_idx, paddings = [], set(), set(), []
    for t in terms:
        kind = _term(t)
        if isinstance(kind, str):
            return kind
        name, qi, ki = kind[0], kind[1], kind[2]
        if name == "true":  # the packed-sequence term on one contiguous run: always true
            continue
        kinds.append(kind)
        q_idx |= {qi} - {None}
        kv_idx |= {ki} - {None}
        if name == "padding":
            paddings.append(t)
    if len(paddings) > 1:
        return f"{len(paddings)} key-padding terms (at most 1 expected)"
    if len(q_idx) > 1 or len(kv_idx) != 1:
        return "the terms index different query / key position vectors"
    names = sorted(k[0] for k in kinds if k[0] != "padding")
    if names not in (["causal"], ["causal", "window"], ["bidirectional"]):
        return f"position terms {names} (causal [+ sliding window] or bidirectional expected)"
    windows = [k[3] for k in kinds if k[0] == "window"]

    kv_len, kv_off = _arange(kv_idx.pop().args[0])
    q_len, q_off = _arange(q_idx.pop().args[0])
    if not (statically_equal(q_len, Sq) and statically_equal(kv_len, Sk)):
        return f"mask positions span {q_len} x {kv_len}, attention is {Sq} x {Sk}"
    if names[0] == "causal" and not statically_equal(q_off - kv_off, kv_len - q_len):
        return f"query offset {q_off} - key offset {kv_off} is not provably Sk - Sq (bottom-right causal)"
    if names[0] == "bidirectional" and not _known_nonnegative(q_off):
        return f"bidirectional term q_idx >= 0 with a query offset {q_off} not provably >= 0"

    if not paddings:
        return KeyPadding(None, None, names[0] == "causal", windows[0] if windows else 0)
    gather = paddings[0]
    source = _placeholder_source(gather.args[0])
    if isinstance(source, str):
        return source
    b_len, b_off = _arange(gather.args[1][0].args[0])
    if not (statically_equal(b_len, B) and statically_equal(b_off, 0)):
        return f"key padding indexes batch rows arange({b_len}) + {b_off}, not arange(B = {B})"
    return KeyPadding(source, gather, names[0] == "causal", windows[0] if windows else 0)


# ----------------------------------------------------------------------------- the pieces


def _unwrap_eager(mask: fx.Node) -> fx.Node | str:
    """eager_mask: torch.where(bool_mask, 0, finfo(dtype).min) -> bool_mask; a bool mask as is."""
    if not is_call(mask, torch.where):
        return mask
    if len(mask.args) != 3 or mask.kwargs:
        return "torch.where mask of an unknown form"
    cond, zero, fill = mask.args
    mv = value(mask)
    if mv is None or not mv.dtype.is_floating_point:
        return "float mask without dtype information"
    is_zero = (
        (is_call(zero, torch.zeros) and zero.args in (((),), ([],)))
        or (is_call(zero, torch.tensor) and len(zero.args) == 1 and zero.args[0] == 0)
        or (is_number(zero) and zero == 0)
    )
    if not is_zero:
        return "float mask: the attended value is not 0"
    if not (is_number(fill) and (fill == torch.finfo(mv.dtype).min or fill == -math.inf)):
        return f"float mask: the masked value {fill!r} is not finfo({mv.dtype}).min or -inf"
    return cond


def _peel_to(node):
    """Skip .to(...) calls that keep dtype and shape (HF's .to(result.device))."""
    while is_method(node, "to"):
        src = node.args[0]
        a, b = value(node), value(src)
        if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape:
            break
        node = src
    return node


def _and_terms(node) -> list | str:
    """The leaves of HF's and_masks tree (result & term.to(device) ...), the True seed dropped."""
    node = _peel_to(node)
    if _is_op(node, operator.and_):
        left, right = _and_terms(node.args[0]), _and_terms(node.args[1])
        if isinstance(left, str):
            return left
        return right if isinstance(right, str) else left + right
    if is_method(node, "new_ones"):
        seed_true = node.args[1:] in (((),), ([],)) and node.kwargs == {"dtype": torch.bool}
        if seed_true:
            return []
        return "new_ones of an unknown form in the mask"
    if _is_op(node, operator.or_) or is_method(node, "new_zeros"):
        return "an or_masks term (not a plain padding mask)"
    if not isinstance(node, fx.Node):
        return f"a constant {node!r} in the mask"
    return [node]


# Dynamo records `a == b` on tensors as operator.eq(a, b) or, in some torch versions (2.11), as the
# method call a.__eq__(b): same arguments either way.
_DUNDER = {operator.eq: "__eq__", operator.ne: "__ne__", operator.le: "__le__", operator.gt: "__gt__",
           operator.ge: "__ge__", operator.and_: "__and__", operator.or_: "__or__", operator.sub: "__sub__",
           operator.add: "__add__"}


def _is_op(node, op, *also) -> bool:
    """``node`` is the binary operator ``op`` (or one of ``also``), as a function or a dunder method call."""
    return is_call(node, op, *also) or (is_method(node, _DUNDER[op]) and len(node.args) == 2)


def _term(t: fx.Node):
    """(name, q_idx, kv_idx[, W]) for a known term, else why not."""
    a = t.args[0] if t.op in ("call_function", "call_method") and t.args else None
    b = t.args[1] if t.op in ("call_function", "call_method") and len(t.args) > 1 else None
    if _is_op(t, operator.le) and _is_index(a, 3) and _is_index(b, 2):
        return ("causal", b, a)
    if _is_op(t, operator.gt) and _is_index(a, 3) and _is_op(b, operator.sub) and _is_index(b.args[0], 2):
        w = b.args[1]
        if not (isinstance(w, int) and not isinstance(w, bool) and w > 0):
            return f"sliding-window term with window {w!r} (a positive int expected)"
        return ("window", b.args[0], a, w)
    if _is_op(t, operator.ge) and _is_index(a, 2) and b == 0 and not isinstance(b, bool):
        return ("bidirectional", a, None)
    # the position-row forms (no attention_mask, no cache): see the module doc
    if _is_op(t, operator.le) and _position_at(a, 3) and _position_at(b, 2):
        return ("causal", b.args[1][1], a.args[1][1])
    if (_is_op(t, operator.gt) and _position_at(a, 3) and _is_op(b, operator.sub)
            and _position_at(b.args[0], 2)):
        w = b.args[1]
        if not (isinstance(w, int) and not isinstance(w, bool) and w > 0):
            return f"sliding-window term with window {w!r} (a positive int expected)"
        return ("window", b.args[0].args[1][1], a.args[1][1], w)
    if _is_op(t, operator.eq, torch.eq) and _is_packed_lookup(a, 2) and _is_packed_lookup(b, 3):
        if a.args[0] is b.args[0] and _one_run_packing(a.args[0]):
            return ("true", None, None)
        return "packed-sequence term on position_ids not proven to be one contiguous run"
    if (
        is_call(t, GETITEM)
        and isinstance(b, tuple)
        and len(b) == 2
        and _is_index(b[0], 0)
        and _is_index(b[1], 3)
    ):
        pm = value(a)
        if pm is None or pm.dtype != torch.bool or pm.dim() != 2:
            return "key-padding term of a tensor that is not a 2-D bool mask"
        return ("padding", None, b[1])
    what = t.target if t.op != "call_method" else f".{t.target}()"
    return f"a mask term of unknown form ({getattr(what, '__name__', what)}: {t.name})"


def _positions_row(node) -> bool:
    """P [B or 1, n] = arange(n) + c, unsqueezed to a row and maybe expanded over the batch: one run."""
    if is_method(node, "expand") and len(node.args) == 3 and node.args[2] == -1:
        node = node.args[0]
    if not (is_method(node, "unsqueeze") and node.args[1:] == (0,)):
        return False
    return _arange(node.args[0]) is not None


def _position_at(node, dim: int) -> bool:
    """P[b_idx, q_idx] (dim 2) or P[b_idx, kv_idx] (dim 3) for a contiguous position row P."""
    return _is_packed_lookup(node, dim) and _positions_row(node.args[0])


def _is_packed_lookup(node, dim: int) -> bool:
    """x[b_idx, q_idx] (dim 2) or x[b_idx, kv_idx] (dim 3), with HF's 4-D index views."""
    if not (is_call(node, GETITEM) and isinstance(node.args[1], tuple) and len(node.args[1]) == 2):
        return False
    b, i = node.args[1]
    return _is_index(b, 0) and _is_index(i, dim)


def _one_run_packing(psm) -> bool:
    """psm = cumsum(diff(P, prepend=P[:, :1] - 1, dim=-1) != 1, -1) over a contiguous position row P:
    every diff is 1, so psm is all 0 (HF's find_packed_sequence_indices on unpacked positions)."""
    if not (is_method(psm, "cumsum") and psm.args[1:] in ((-1,), (1,)) and not psm.kwargs):
        return False
    ne = psm.args[0]
    if not (_is_op(ne, operator.ne, torch.ne) and len(ne.args) == 2 and ne.args[1] == 1):
        return False
    diff = ne.args[0]
    if not (is_call(diff, torch.diff) and len(diff.args) == 1 and diff.kwargs.get("dim") in (-1, 1)
            and set(diff.kwargs) == {"dim", "prepend"}):
        return False
    rows, prepend = diff.args[0], diff.kwargs["prepend"]
    if not (_positions_row(rows) and _is_op(prepend, operator.sub) and prepend.args[1] == 1):
        return False
    first = prepend.args[0]
    head = (ALL, slice(None, 1, None))
    return is_call(first, GETITEM) and first.args[0] is rows and first.args[1] == head


def _is_index(node, dim: int) -> bool:
    """arange(n)[+ offset] viewed along one of 4 dims: x[None, None, :, None] for dim 2, etc."""
    if not (is_call(node, GETITEM) and isinstance(node.args[1], tuple) and len(node.args[1]) == 4):
        return False
    index = node.args[1]
    if not all((i == ALL) if d == dim else (i is None) for d, i in enumerate(index)):
        return False
    return _arange(node.args[0]) is not None


def _size(x):
    """An int, or the SymInt Dynamo recorded for a size node; None otherwise."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, fx.Node):
        v = x.meta.get("example_value", x.meta.get("val"))
        if isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool):
            return v
    return None


def _arange(node):
    """(length, offset) of torch.arange(length[, device=...]) [+ offset], else None."""
    offset = 0
    if _is_op(node, operator.add) and len(node.args) == 2:
        node, offset = node.args
        offset = _size(offset)
    if not (is_call(node, torch.arange) and len(node.args) == 1 and set(node.kwargs) <= {"device"}):
        return None
    length = _size(node.args[0])
    if length is None or offset is None:
        return None
    return length, offset


def _known_nonnegative(x) -> bool:
    try:
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return bool(statically_known_true(x >= 0))
    except Exception:
        return False


def _placeholder_source(pm: fx.Node) -> fx.Node | str:
    """The attention_mask input behind HF's 2-D pm (through .to, .view / .reshape and a right F.pad)."""
    node = pm
    while True:
        if is_method(node, "to", "view", "reshape"):
            node = node.args[0]
        elif is_call(node, F.pad) and len(node.args) == 2 and not node.kwargs and node.args[1][0] == 0:
            node = node.args[0]
        else:
            break
    if not (isinstance(node, fx.Node) and node.op == "placeholder"):
        name = getattr(node, "name", node)
        return f"the key-padding mask does not come from an attention_mask input ({name})"
    return node
