"""Linears whose weight is a parameter, as Dynamo records them:

    F.linear(x, W[N,K], b)                       nn.Linear
    torch.addmm(b, x2d, W[K,N])                  GPT-2 Conv1D (weight stored transposed)
    torch.mm(x2d, W[K,N]) / torch.matmul(x, W[K,N]) / x @ W.t()

The weight is quantized once, here at compile time, and kept as constants on the GraphModule:
    ptpc_fp8:        per_token_quant_fp8(x) -> ptpc_scaled_mm(xq, x_scale, wq, w_scale[N,1], b)
    fp8_per_tensor:  fp8_per_tensor_linear(x, wq, w_scale[1], b)
The quant stays a separate op so the post-grad pass can fuse a preceding RMSNorm / SiLU*mul into it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph_utils import add_constant, arg, is_call, is_method, module_name, parameter_of, value

NAME = "linear"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class LinearMatch:
    pattern: str  # linear | addmm | mm
    anchor: fx.Node
    x: fx.Node
    weight: torch.Tensor  # the parameter, as stored
    weight_node: fx.Node
    transposed: bool  # weight stored [K, N] (Conv1D, mm): quantize weight.t()
    bias: fx.Node | None
    module: str
    dead: list = field(default_factory=list)

    @property
    def out_features(self) -> int:
        return self.weight.shape[1] if self.transposed else self.weight.shape[0]


def is_site(node: fx.Node) -> bool:
    return is_call(node, F.linear, torch.addmm, torch.mm, torch.matmul, operator.matmul)


def match(node: fx.Node, gm: fx.GraphModule, example_inputs) -> LinearMatch | str | None:
    """A LinearMatch, a reason it cannot be rewritten, or None when this is no linear on a parameter."""
    dead = []
    if is_call(node, F.linear):
        x, w_node, bias, transposed = (
            arg(node, 0, "input"),
            arg(node, 1, "weight"),
            arg(node, 2, "bias"),
            False,
        )
        pattern = "linear"
    elif is_call(node, torch.addmm):
        bias, x, w_node = arg(node, 0, "input"), arg(node, 1, "mat1"), arg(node, 2, "mat2")
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return "addmm with alpha/beta != 1"
        transposed, pattern = True, "addmm"
    else:
        x, w_node, bias, transposed, pattern = node.args[0], node.args[1], None, True, "mm"
        if is_method(w_node, "t") or (
            is_method(w_node, "transpose") and sorted(a % 2 for a in w_node.args[1:]) == [0, 1]
        ):
            dead.append(w_node)
            w_node, transposed = w_node.args[0], False
    weight = parameter_of(w_node, gm, example_inputs)
    if weight is None:
        return None  # an activation matmul (attention scores, ...), not a linear layer
    if weight.dim() != 2:
        return f"weight is {weight.dim()}-D (2-D expected)"
    xv = value(x)
    if xv is None:
        return "no shape information for the input"
    if xv.dtype not in SUPPORTED_DTYPES or weight.dtype != xv.dtype:
        return f"dtype x={xv.dtype} weight={weight.dtype} (fp16/bf16/fp32, equal, expected)"
    if pattern != "linear" and xv.dim() != 2 and pattern != "mm":
        return f"addmm input is {xv.dim()}-D"
    if pattern == "mm" and xv.dim() < 2:
        return "matmul with a 1-D input"
    if bias is not None and not isinstance(bias, fx.Node):
        return "bias is not a tensor"
    if bias is not None and (value(bias) is None or value(bias).dim() != 1):
        return "bias is not 1-D [N]"
    out = value(node)
    if (out is not None and out.requires_grad) or xv.requires_grad:
        return "needs autograd (training); the FP8 rewrite is for inference: run under torch.no_grad()"
    return LinearMatch(pattern, node, x, weight, w_node, transposed, bias, module_name(node), dead)


ROUTER_HOPS = 8  # a router's logits reach topk through a few casts / softmax / sigmoid / bias adds


def is_moe_router(anchor: fx.Node) -> bool:
    """Whether this linear's output picks experts: it reaches a topk (or argmax, sort, max along a dim) within
    ROUTER_HOPS nodes without passing through another GEMM. Such routers stay in the input dtype (vLLM keeps them unquantized too): fp8 logits
    can flip which experts a token goes to, and the weight is tiny ([num_experts, hidden])."""
    frontier, seen = [anchor], {anchor}
    for _ in range(ROUTER_HOPS):
        nxt = []
        for node in frontier:
            for user in node.users:
                if user in seen:
                    continue
                seen.add(user)
                if _picks_indices(user):
                    return True
                if not is_site(user) and user.op in ("call_function", "call_method"):
                    nxt.append(user)
        frontier = nxt
    return False


def _picks_indices(node: fx.Node) -> bool:
    """topk / argmax / sort, or max along a dim (PhiMoE's sparsemixer): an op that chooses experts."""
    if is_call(node, torch.topk, torch.argmax, torch.sort) or is_method(node, "topk", "argmax", "sort"):
        return True
    return (is_call(node, torch.max) or is_method(node, "max")) and (len(node.args) > 1 or "dim" in node.kwargs)


def quantize(weight_nk: torch.Tensor, quantization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a [N, K] weight once (compile time)."""
    from ..kernels import quantize_weight as qw

    w = weight_nk.detach().contiguous()
    if quantization == "fp8_per_tensor":
        return qw.quantize_weight_per_tensor(w)
    return qw.quantize_weight_per_channel(w)


def weight_nk(m: LinearMatch) -> torch.Tensor:
    return m.weight.t() if m.transposed else m.weight


def emit(
    graph: fx.Graph,
    gm: fx.GraphModule,
    x: fx.Node,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: fx.Node | None,
    quantization: str,
    name: str,
    fast_accum: bool = False,
    sources=(),
) -> fx.Node:
    """Insert the quantized linear (before the current insertion point); returns the [..., N] output.
    sources: the weight nodes wq / w_scale were quantized from (graph_utils.add_constant)."""
    wq_node = graph.get_attr(add_constant(gm, f"{name}_wq", wq, sources))
    ws_node = graph.get_attr(add_constant(gm, f"{name}_w_scale", w_scale, sources))
    if quantization == "fp8_per_tensor":
        return graph.call_function(
            torch.ops.rocm_attn.fp8_per_tensor_linear.default, (x, wq_node, ws_node, bias)
        )
    xq, xs = emit_quant(graph, x)
    return emit_mm(graph, x, xq, xs, wq_node, ws_node, bias, fast_accum)


def emit_quant(graph: fx.Graph, x: fx.Node) -> tuple[fx.Node, fx.Node]:
    """per_token_quant_fp8(x) as 2-D (xq [M, K], x_scale [M, 1]) nodes, inserted at the insertion point."""
    k = value(x).shape[-1]
    quant = graph.call_function(torch.ops.rocm_attn.per_token_quant_fp8.default, (x,))
    xq = graph.call_method("reshape", (graph.call_function(operator.getitem, (quant, 0)), -1, k))
    xs = graph.call_method("reshape", (graph.call_function(operator.getitem, (quant, 1)), -1, 1))
    return xq, xs


def emit_mm(graph: fx.Graph, x: fx.Node, xq: fx.Node, xs: fx.Node, wq: fx.Node, ws: fx.Node, bias,
            fast_accum: bool = False) -> fx.Node:
    """ptpc_scaled_mm(xq, xs, wq, ws, bias) back to x's leading shape: [..., N] in x's dtype."""
    kwargs = {"out_dtype": value(x).dtype, **({"fast_accum": True} if fast_accum else {})}
    mm = graph.call_function(torch.ops.rocm_attn.ptpc_scaled_mm.default, (xq, xs, wq, ws, bias), kwargs)
    if value(x).dim() == 2:
        return mm
    lead = graph.call_function(operator.getitem, (graph.call_method("size", (x,)), slice(None, -1)))
    return graph.call_method("unflatten", (mm, 0, lead))


def weight_bytes(weight: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> dict:
    return {
        "original_bytes": weight.numel() * weight.element_size(),
        "bf16_bytes": weight.numel() * 2,
        "fp8_bytes": wq.numel() * wq.element_size() + w_scale.numel() * w_scale.element_size(),
    }
