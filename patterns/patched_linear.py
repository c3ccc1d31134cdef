"""rocm_attn.patch()'s FP8 linears in a compiled graph: ptpc_linear(x, wq, w_scale, bias).

A patched model's q/k/v (and gate/up) projections each call ptpc_linear on the same input, and each call
quantizes that input again inside the op, where no fusion can reach it. Split into its two halves

    ptpc_linear(x, wq, ws, b)  ->  xq, xs = per_token_quant_fp8(x)              (one per distinct x)
                                   ptpc_scaled_mm(xq, xs, wq, ws, b, out_dtype=x.dtype)

the quant is shared by every linear that reads x, and the post-grad norm_quant pass can then fuse it into
the RMSNorm that produced x, as for an unpatched model (the nodes are linear.py's emit_quant / emit_mm).
The split is what the op itself runs (its providers are quant + scaled_mm), so it is exact. The weights
stay the module's buffers: no copy.

Linears that read the same x and whose wq, w_scale (and bias) are adjacent rows of one buffer (patch() lays
q/k/v and gate/up out so, Config.fuse_projections) become one wider GEMM, each output a narrow() of it:

    ptpc_scaled_mm(xq, xs, wq[rows of q|k|v], ...)[..., offset : offset + N_i]

Rows of a GEMM do not interact and each keeps its own scale, so this is exact too; the wide weight is a view
of the buffer the modules' views share (no copy).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .graph_utils import arg, is_call, tensor_of, value

NAME = "patched_linear"


def _targets():
    op = getattr(torch.ops.rocm_attn, "ptpc_linear", None)
    return () if op is None else (op, op.default)


def is_site(node: fx.Node) -> bool:
    return is_call(node, *_targets())


def operands(node: fx.Node):
    """(x, wq, w_scale, bias, fast_accum) when every tensor has shape information, else why not."""
    x, wq, ws, bias = arg(node, 0, "x"), arg(node, 1, "wq"), arg(node, 2, "w_scale"), arg(node, 3, "bias")
    fast_accum = arg(node, 4, "fast_accum", False)
    if not all(isinstance(t, fx.Node) and value(t) is not None for t in (x, wq, ws)):
        return "ptpc_linear operands without shape information"
    if value(x).dim() < 2:
        return "ptpc_linear on a 1-D input"
    return x, wq, ws, bias, bool(fast_accum)


def rows_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One view over tensors that are contiguous, consecutive row blocks of one storage, in this order
    (the same dtype, device and trailing shape), else None. (Also used by patch()'s eager projection groups.)"""
    if any(t is None for t in tensors):
        return None
    first = tensors[0]
    row = first[0].numel() if first.dim() > 1 else 1  # elements per row
    offset = first.storage_offset()
    for t in tensors:
        same_storage = t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        if (not t.is_contiguous() or t.dtype != first.dtype or t.device != first.device
                or t.shape[1:] != first.shape[1:] or not same_storage or t.storage_offset() != offset):
            return None
        offset += t.shape[0] * row
    rows = sum(t.shape[0] for t in tensors)
    return torch.as_strided(first, (rows, *first.shape[1:]), first.stride(), first.storage_offset())


def shared_weight_groups(calls: list, gm: fx.GraphModule, example_inputs) -> list[tuple[list, tuple | None]]:
    """calls: [(node, (x, wq, ws, bias, fast_accum))] reading one x -> [(group, operands)]: groups (lists of
    calls, each in weight-row order) that can run as one GEMM, with merged_operands' views spanning the group
    (None for a group of one: a call that fits no group). A group's members share fast_accum, have all or no
    bias, and their wq / w_scale / bias are adjacent rows of one buffer each."""
    def storage_key(call):
        wq = tensor_of(call[1][1], gm, example_inputs)
        try:
            return (wq.untyped_storage().data_ptr(), wq.storage_offset())
        except Exception:  # no tensor, or one without real storage (fake, meta): run it on its own
            return None

    keyed = [(storage_key(c), c) for c in calls]
    singles = [([c], None) for k, c in keyed if k is None]
    ordered = sorted(((k, c) for k, c in keyed if k is not None), key=lambda kc: kc[0])
    groups: list[tuple[list, tuple | None]] = []
    for _, call in ordered:
        merged = merged_operands(groups[-1][0] + [call], gm, example_inputs) if groups else None
        if merged is not None:
            groups[-1] = (groups[-1][0] + [call], merged)
        else:
            groups.append(([call], None))
    return groups + singles


def merged_operands(group: list, gm: fx.GraphModule, example_inputs):
    """(wq, w_scale, bias | None) views spanning the group's rows, or None when they are not adjacent rows of
    one buffer each (or the members differ in fast_accum / having a bias)."""
    ops = [c[1] for c in group]
    if len({o[4] for o in ops}) != 1 or len({o[3] is None for o in ops}) != 1:
        return None
    merged = []
    for i in (1, 2, 3):
        if ops[0][i] is None:
            merged.append(None)
            continue
        try:
            view = rows_view([tensor_of(o[i], gm, example_inputs) for o in ops])
        except Exception:  # tensors without real storage
            view = None
        if view is None:
            return None
        merged.append(view)
    return tuple(merged)


def out_features(ops) -> int:
    """N of one call's operands (x, wq [N, K], ...)."""
    return value(ops[1]).shape[0]
