"""Pass faults (issue 9, item 3): a pass that raises leaves its graph compiled without it (a warning
and a report line) unless strict=True; a graph break inside a decoder layer still rewrites what each
graph holds; recompiles are counted in the reports and bounded."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rocm_attn.passes import attention_rewrite, pass_manager
from rocm_attn.passes import report as report_mod

import rocm_attn
from rocm_attn.testing import rel_err

FP8_BUDGET = 6e-2  # logits of a random tiny layer through PTPC FP8 linears (tests/passes uses the same)


class Layer(nn.Module):
    """A Llama-shaped decoder layer: q/k/v -> SDPA -> o_proj, then gate/up -> SiLU*mul -> down.
    ``break_inside``: a graph break between the attention and the MLP."""

    def __init__(self, d=32, heads=2, break_inside=False):
        super().__init__()
        self.heads, self.break_inside = heads, break_inside
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False)
        self.down_proj = nn.Linear(64, d, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (
            p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)
        x = x + self.o_proj(a)
        if self.break_inside:
            torch._dynamo.graph_break()
        return x + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def model(break_inside=False):
    torch.manual_seed(0)
    return Layer(break_inside=break_inside).eval()


def run_compiled(m, x, **options):
    torch._dynamo.reset()
    with torch.no_grad():
        return torch.compile(m, backend="rocm_attn", options=options)(x)


def test_failing_pass_on_one_graph_compiles_it_without_that_pass(monkeypatch):
    """The pass corrupts graph 1 then raises: graph 1 is restored and compiled without it (warning and
    report line naming the graph); graph 0 and the other passes are untouched."""

    def flaky(gm, example_inputs, config, graph_report):
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        if not any(n.target is F.scaled_dot_product_attention for n in calls):  # the MLP graph
            for n in calls:
                n.target = torch.relu
            raise RuntimeError("flaky on the MLP graph")
        return 0

    monkeypatch.setattr(pass_manager, "PASSES", [("flaky", flaky)] + pass_manager.PASSES)
    m, x = model(break_inside=True), torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = m(x)
    with pytest.warns(UserWarning, match=r"pass flaky failed on graph 1; compiling that graph without it"):
        report = rocm_attn.explain(m, x, options={"quantization": "none"})
    assert report.errors == ["graph 1: flaky: RuntimeError: flaky on the MLP graph"]
    assert "PASS FAILED (graph compiled without it): graph 1: flaky" in str(report)
    assert report.attention_rewritten == 1  # graph 0's attention; later passes ran on the restored graph 1
    with pytest.warns(UserWarning, match="pass flaky failed"):  # each torch.compile graph has its own report
        out = run_compiled(m, x, quantization="none")
    assert rel_err(out, ref) < 1e-5


def test_attention_pass_raising_keeps_the_linear_rewrites(monkeypatch):
    """A bug in an attention pattern: SDPA stays as it was (correct), the linears are still FP8."""

    def broken(*args, **kwargs):
        raise IndexError("pattern bug")

    monkeypatch.setattr(attention_rewrite, "run", broken)
    monkeypatch.setattr(
        pass_manager, "PASSES", [("attention_rewrite", broken), ("linear_rewrite", pass_manager.PASSES[1][1])]
    )
    m, x = model(), torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = m(x)
    with pytest.warns(
        UserWarning, match=r"pass attention_rewrite failed on graph 0.*IndexError: pattern bug"
    ):
        report = rocm_attn.explain(m, x)
    assert report.attention_total == 0  # the failed pass's sites were rolled back with its graph
    assert report.linear_rewritten == report.linear_total == 7
    with pytest.warns(UserWarning):
        out = run_compiled(m, x)
    assert rel_err(out, ref) < FP8_BUDGET
    torch._dynamo.reset()
    with pytest.raises(Exception, match="pattern bug"):
        run_compiled(m, x, strict=True)


def test_graph_break_inside_a_decoder_layer_still_rewrites():
    m, x = model(break_inside=True), torch.randn(2, 6, 32)
    with torch.no_grad():
        ref = m(x)
    report = rocm_attn.explain(m, x)
    assert report.graph_breaks >= 1 and len(report.graphs) >= 2, str(report)
    assert report.errors == []
    # attention + q/k/v/o in the first graph, gate/up/down after the break: every one rewritten
    assert (report.attention_rewritten, report.attention_total) == (1, 1)
    assert (report.linear_rewritten, report.linear_total) == (7, 7), str(report)
    by_graph = [{s.module.split(".")[-1] for s in g.sites if s.rewritten} for g in report.graphs]
    assert any({"q_proj", "o_proj"} <= names for names in by_graph)
    assert any({"gate_proj", "down_proj"} <= names for names in by_graph)
    assert rel_err(run_compiled(m, x), ref) < FP8_BUDGET


def test_recompiles_are_counted_and_bounded():
    """Every compile leaves one report in rocm_attn.passes.report.recent. With dynamic shapes: one
    automatic-dynamic recompile, then none. With static shapes: at most recompile_limit compiles,
    after which Dynamo runs the frame eagerly (still correct)."""
    m = model()
    lengths = (4, 7, 9, 5)
    report_mod.recent.clear()
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="rocm_attn", options={"quantization": "none"})
    with torch.no_grad():
        for s in lengths:
            x = torch.randn(1, s, 32)
            assert rel_err(compiled(x), m(x)) < 1e-5
    assert len(report_mod.recent) == 2  # static first shape, then one dynamic graph for the rest
    assert all(r.attention_rewritten == 1 for r in report_mod.recent)

    # config.patch, not monkeypatch: monkeypatch's undo deletes a config entry it did not see in __dict__,
    # and every later torch.compile in the session then fails on the missing recompile_limit
    report_mod.recent.clear()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled = torch.compile(m, backend="rocm_attn", dynamic=False, options={"quantization": "none"})
        with torch.no_grad():
            for s in lengths:
                x = torch.randn(1, s, 32)
                assert rel_err(compiled(x), m(x)) < 1e-5
    assert len(report_mod.recent) == 2  # bounded by the limit; the later shapes run eagerly

    # the list of recent reports is itself bounded
    for _ in range(40):
        report_mod.remember(report_mod.Report())
    assert len(report_mod.recent) == 16
