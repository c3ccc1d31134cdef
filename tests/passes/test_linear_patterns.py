"""Linear patterns on small modules: op counts before/after, skip rules, fused projections."""

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from rocm_attn.testing import capture_passes as capture
from rocm_attn.testing import count_calls as count
from rocm_attn.testing import rel_err

OPS = torch.ops.rocm_attn
QUANT, MM, PER_TENSOR = (
    OPS.per_token_quant_fp8.default,
    OPS.ptpc_scaled_mm.default,
    OPS.fp8_per_tensor_linear.default,
)


class Block(nn.Module):
    """q/k/v sharing an input, an o_proj, a Conv1D, an x @ W.t() matmul, and an lm_head."""

    def __init__(self, d=64, bias=False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, n, bias=bias) for n in (64, 32, 32))
        self.o_proj = nn.Linear(128, d, bias=True)
        self.c_fc = Conv1D(96, d)
        self.w = nn.Parameter(torch.randn(48, 96) / 10)
        self.lm_head = nn.Linear(48, 80, bias=False)

    def forward(self, x):
        h = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)
        h = self.c_fc(self.o_proj(h))
        return self.lm_head(torch.matmul(h, self.w.t()))


@pytest.mark.parametrize("fuse", [True, False])
def test_ptpc_counts_and_accuracy(fuse):
    model = Block(bias=True).eval()
    x = torch.randn(2, 5, 64)
    out, gm, gr = capture(model, x, fuse_projections=fuse)
    linears = gr.sites
    assert len(linears) == 7
    assert sum(s.rewritten for s in linears) == 6
    lm = next(s for s in linears if s.module == "lm_head")
    assert not lm.rewritten and "skip_modules" in lm.reason
    assert {s.pattern for s in linears} == {"linear", "addmm", "mm"}
    gemms = 4 if fuse else 6  # q/k/v -> one GEMM when fused
    assert count(gm, QUANT) == gemms and count(gm, MM) == gemms
    assert count(gm, torch.nn.functional.linear) == 1  # lm_head stays
    assert gr.fusions["fused_projections"] == (1 if fuse else 0)
    assert gr.memory["fp8_bytes"] < 0.6 * gr.memory["bf16_bytes"]
    with torch.no_grad():
        assert rel_err(out, model(x)) < 8e-2  # four FP8 GEMMs in a row


def test_fused_is_exactly_the_separate_result():
    model = Block().eval()
    x = torch.randn(3, 64)
    fused, _, _ = capture(model, x, fuse_projections=True)
    separate, _, _ = capture(model, x, fuse_projections=False)
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-6)


def test_per_tensor_and_none():
    model = Block().eval()
    x = torch.randn(4, 64)
    out, gm, gr = capture(model, x, quantization="fp8_per_tensor")
    assert count(gm, PER_TENSOR) == 6 and count(gm, MM) == 0  # per-tensor: never fused
    with torch.no_grad():
        assert rel_err(out, model(x)) < 1e-1
    out, gm, gr = capture(model, x, quantization="none")
    assert count(gm, QUANT, MM, PER_TENSOR) == 0
    assert all(s.reason == "quantization='none'" for s in gr.sites if s.module != "lm_head")


def test_skip_modules_patterns():
    model = Block().eval()
    x = torch.randn(4, 64)
    _, gm, gr = capture(model, x, skip_modules=("*_proj",))
    done = {s.module for s in gr.sites if s.rewritten}
    assert done == {"c_fc", "", "lm_head"}  # replaces the defaults; the root-level matmul has no name
    _, gm, gr = capture(model, x, skip_modules=())
    assert all(s.rewritten for s in gr.sites)


def test_weight_quantized_once_and_stored_as_constant():
    model = Block().eval()
    x = torch.randn(4, 64)
    _, gm, _ = capture(model, x, fuse_projections=False)
    consts = [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert consts and all(
        getattr(gm, n.target).dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float32)
        for n in consts
    )
    wq = getattr(gm, next(n.target for n in consts if n.target.startswith("o_proj_wq")))
    assert wq.shape == model.o_proj.weight.shape and wq.dtype.itemsize == 1


def test_activation_matmul_is_not_a_linear():
    def f(a, b):
        return torch.matmul(a, b)

    _, gm, gr = capture(f, torch.randn(4, 8), torch.randn(8, 4))
    assert gr.sites == [] and count(gm, MM) == 0


def test_dtype_mismatch_stays_with_reason():
    lin = nn.Linear(32, 16).eval()

    def f(x):
        return lin(x.to(torch.float16).float())  # fine: same dtype

    _, gm, gr = capture(f, torch.randn(2, 32))
    assert gr.sites[0].rewritten
    half = nn.Linear(32, 16).half().eval()
    _, gm, gr = capture(lambda x: nn.functional.linear(x, half.weight.float()), torch.randn(2, 32))
    assert gr.sites == []  # weight.float() is computed, not a parameter: not a linear layer site


class _ShardedParameter(nn.Parameter):
    """Stands in for a DTensor parameter: ``to_local()`` gives this rank's shard (the first rows)."""

    def to_local(self):
        return self.data[: self.shape[0] // 2]


def prim_to_local(t):  # the name Dynamo (torch 2.11) gives its to_local helper
    return t.to_local()


@pytest.mark.parametrize("form", ["call_method", "prim_to_local", "other_function"])
def test_parameter_of_sees_the_local_shard_of_a_tp_weight(form):
    from rocm_attn.patterns.graph_utils import parameter_of
    from torch import fx

    weight = _ShardedParameter(torch.randn(8, 4))
    graph = fx.Graph()
    w = graph.placeholder("w")
    if form == "call_method":
        local = graph.call_method("to_local", (w,))
    elif form == "prim_to_local":
        local = graph.call_function(prim_to_local, (w,))
    else:  # any other op on the weight is not its shard
        local = graph.call_function(torch.neg, (w,))
    graph.output(local)
    gm = fx.GraphModule(nn.Module(), graph)
    got = parameter_of(local, gm, [weight])
    if form == "other_function":
        assert got is None
    else:
        assert torch.equal(got, weight.data[:4])


class MoEBlock(nn.Module):
    """A router (softmax -> topk, as transformers' TopKRouters; or max along a dim, as PhiMoE's sparsemixer)
    beside a shared-expert projection that reads the same input."""

    def __init__(self, d=64, experts=8, pick="topk"):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.shared_gate, self.shared_up = nn.Linear(d, 96, bias=False), nn.Linear(d, 96, bias=False)
        self.pick = pick

    def forward(self, x):
        probs = torch.softmax(self.router(x).float(), dim=-1)
        if self.pick == "topk":
            weights, chosen = torch.topk(probs, 2, dim=-1)
        else:
            weights, chosen = probs.max(dim=-1, keepdim=True)
        shared = self.shared_gate(x) * self.shared_up(x)
        return shared.sum(-1, keepdim=True) * weights.sum(-1, keepdim=True).to(x.dtype), chosen


@pytest.mark.parametrize("pick", ["topk", "max"])
def test_moe_router_stays_unquantized(pick):
    """A linear whose output selects experts keeps its dtype (vLLM keeps routers unquantized): fp8 router logits
    can send a token to other experts. The projections beside it are still rewritten, and fused without it."""
    torch.manual_seed(0)
    model = MoEBlock(pick=pick).eval()
    x = torch.randn(2, 7, 64)
    out, gm, gr = capture(model, x)
    router = next(s for s in gr.sites if s.module == "router")
    assert not router.rewritten and "MoE router" in router.reason
    assert sorted(s.module for s in gr.sites if s.rewritten) == ["shared_gate", "shared_up"]
    assert count(gm, torch.nn.functional.linear) == 1 and count(gm, MM) == 1  # shared gate|up fused
    with torch.no_grad():
        assert torch.equal(out[1], model(x)[1])  # the same experts chosen


def test_a_projection_before_a_topk_elsewhere_is_no_router():
    """Only the linear right before the choice is a router: a projection whose output reaches the topk only
    through another GEMM is rewritten."""
    model = MoEBlock().eval()
    proj = nn.Linear(64, 64, bias=False)

    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.moe = proj, model

        def forward(self, x):
            return self.moe(self.proj(x))

    _, _, gr = capture(Stacked().eval(), torch.randn(5, 64))
    assert {s.module: s.rewritten for s in gr.sites} == {"proj": True, "moe.router": False,
                                                         "moe.shared_gate": True, "moe.shared_up": True}
