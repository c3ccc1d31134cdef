"""rocm_attn.patch()'s FP8 linears in a compiled graph: ptpc_linear(x, wq, w_scale, bias).

A patched model's q/k/v (and gate/up) projections each call ptpc_linear on the same input, and each call
quantizes that input again inside the op, where no fusion can reach it. Split into its two halves

    ptpc_linear(x, wq, ws, b)  ->  xq, xs = per_token_quant_fp8(x)              (one per distinct x)
                                   ptpc_scaled_mm(xq, xs, wq, ws, b, out_dtype=x.dtype)

the quant is shared by every linear that reads x, and the post-grad norm_quant pass can then fuse it into
the RMSNorm that produced x, as for an unpatched model (the nodes are linear.py's emit_quant / emit_mm).
The split is what the op itself runs (its providers are quant + scaled_mm), so it is exact. The weights
stay the module's buffers: no copy.

Then, with Config.fuse_projections, the GEMMs that read the same x and whose weights lie back to back in
one storage (patch() lays out q/k/v/o and gate/up that way) run as one wider GEMM over that storage
(a view, no copy), its output narrowed per linear: one GEMM instead of three (q/k/v) or two (gate/up).
Per-channel scales make each column's result the one its own GEMM gives (up to summation order).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from typing import NamedTuple

from .graph_utils import arg, is_call, value

NAME = "patched_linear"


class Member(NamedTuple):
    """One split GEMM that may join a wider one: its node, operands and real weight / scale tensors."""

    node: fx.Node
    operands: tuple
    wq: torch.Tensor
    ws: torch.Tensor


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


def adjacent_runs(members: list[Member]) -> list[list[Member]]:
    """Runs of >= 2 GEMMs (same input, already grouped by the caller) whose weights and scales are
    consecutive row blocks of one storage each, with the same K, fast_accum and bias-or-not."""
    by_storage: dict[tuple, list[Member]] = {}
    for m in members:
        wq, ws = m.wq, m.ws
        if wq.dim() != 2 or wq.stride() != (wq.shape[1], 1) or tuple(ws.shape) != (wq.shape[0], 1) \
                or not ws.is_contiguous():
            continue
        key = (wq.untyped_storage().data_ptr(), ws.untyped_storage().data_ptr(), wq.shape[1], wq.dtype,
               m.operands[3] is None, m.operands[4])
        by_storage.setdefault(key, []).append(m)
    runs = []
    for group in by_storage.values():
        group.sort(key=lambda m: m.wq.storage_offset())
        run = [group[0]]
        for m in group[1:]:
            prev = run[-1]
            if (m.wq.storage_offset() == prev.wq.storage_offset() + prev.wq.numel()
                    and m.ws.storage_offset() == prev.ws.storage_offset() + prev.ws.numel()):
                run.append(m)
            else:
                runs.append(run)
                run = [m]
        runs.append(run)
    return [r for r in runs if len(r) >= 2]


def wide_operands(run: list[Member]) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's weights and scales as one [sum N, K] / [sum N, 1] view of their storage (no copy)."""
    wq0, ws0 = run[0].wq, run[0].ws
    n = sum(m.wq.shape[0] for m in run)
    k = wq0.shape[1]
    return (torch.as_strided(wq0, (n, k), (k, 1), wq0.storage_offset()),
            torch.as_strided(ws0, (n, 1), (1, 1), ws0.storage_offset()))
