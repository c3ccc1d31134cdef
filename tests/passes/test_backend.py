"""The backend end to end on small modules: post-grad fusions, pass failure fallback, strict,
uuid, dumps, explain/export, the CLI."""

import json
import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rocm_attn.passes import pass_manager
from rocm_attn.passes.post_grad_fusion import PostGradFusion

import rocm_attn
from rocm_attn import Config
from rocm_attn.testing import rel_err


class RMSNorm(nn.Module):
    """HF's LlamaRMSNorm."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(1 + torch.randn(d) / 10)

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(x.dtype)


class TinyDecoderLayer(nn.Module):
    """norm -> q/k/v -> SDPA -> o_proj -> residual -> norm -> gate/up -> SiLU*mul -> down."""

    def __init__(self, d=64, heads=4):
        super().__init__()
        self.heads = heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(d), RMSNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(d, 128, bias=False), nn.Linear(d, 128, bias=False)
        self.down_proj = nn.Linear(128, d, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        h = self.input_layernorm(x)
        q, k, v = (
            p(h).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)
        x = x + self.o_proj(a)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    return TinyDecoderLayer().eval(), torch.randn(2, 8, 64)


def test_explain_counts_post_grad_fusions(layer, tmp_path):
    model, x = layer
    report = rocm_attn.explain(model, x, options={"dump_dir": str(tmp_path)})
    assert isinstance(report, rocm_attn.Report)
    assert (report.attention_rewritten, report.attention_total) == (1, 1)
    assert (report.linear_rewritten, report.linear_total) == (7, 7)
    assert report.fusions == {
        "fused_projections": 2,
        "rms_norm_quant_fp8": 1,
        "fused_add_rms_norm_quant_fp8": 1,
        "silu_mul_quant_fp8": 1,
    }
    text = str(report)
    assert "attention rewritten 1/1" in text and "o_proj" in text
    d = report.to_dict()
    assert json.loads(json.dumps(d))["linear_rewritten"] == 7
    # dumps: readable Python per pass + the report
    files = sorted(os.listdir(tmp_path / "graph_0"))
    assert files == ["00_captured.py", "01_attention_rewrite.py", "02_linear_rewrite.py",
                     "03_patched_linear_split.py", "04_rope_tables.py"]
    assert "flash_attention" in (tmp_path / "graph_0" / "01_attention_rewrite.py").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["attention_total"] == 1


def test_silu_mul_quant_fuses_two_separate_projections(layer):
    """With gate/up left as two GEMMs (fuse_projections=False, as in a patch()-ed model), SiLU*mul and
    down_proj's quant still become one silu_mul_quant_fp8, here with gate and up as two operands."""
    model, x = layer
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch({"fx_graph_cache": False}):
        report = rocm_attn.explain(model, x, options={"fuse_projections": False})
        assert report.fusions.get("fused_projections", 0) == 0 and report.fusions["silu_mul_quant_fp8"] == 1
        torch._dynamo.reset()
        out = torch.compile(model, backend="rocm_attn", options={"fuse_projections": False})(x)
        assert rel_err(out, model(x)) < 6e-2


@pytest.mark.full_inductor  # the generated C++ kernels too (tests/conftest.py)
def test_compiled_output_with_fusions(layer):
    model, x = layer
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="rocm_attn")(x)
        assert rel_err(out, ref) < 6e-2
        torch._dynamo.reset()
        out = torch.compile(model, backend="rocm_attn", options={"quantization": "none"})(x)
        assert rel_err(out, ref) < 1e-5


def test_failing_pass_falls_back_and_strict_raises(layer, monkeypatch):
    model, x = layer

    def broken(gm, example_inputs, config, graph_report):
        graph_report.sites.append(None)  # partial work the fallback must undo
        for n in gm.graph.nodes:
            if n.op == "call_function":
                n.target = torch.relu  # corrupt the graph, then fail
                break
        raise RuntimeError("boom")

    monkeypatch.setattr(pass_manager, "PASSES", [("broken", broken)] + pass_manager.PASSES)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="pass broken failed"):
        report = rocm_attn.explain(model, x, options={"quantization": "none"})
    assert report.errors == ["graph 0: broken: RuntimeError: boom"]
    assert "PASS FAILED" in str(report)
    assert report.attention_rewritten == 1  # the later passes still ran on the restored graph
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="rocm_attn", options={"quantization": "none"})(x)
    assert rel_err(out, ref) < 1e-5
    torch._dynamo.reset()
    with pytest.raises(Exception, match="boom"):
        with torch.no_grad():
            torch.compile(model, backend="rocm_attn", options={"strict": True})(x)


def test_uuid_covers_config_and_source():
    a, b = PostGradFusion(Config()), PostGradFusion(Config())
    assert a.uuid() == b.uuid()
    assert a.uuid() != PostGradFusion(Config(quantization="fp8_per_tensor")).uuid()
    assert a.uuid() != PostGradFusion(Config(kernels="torch")).uuid()


def test_options_from_env_and_bad_options(monkeypatch):
    monkeypatch.setenv("ROCM_ATTN_QUANTIZATION", "none")
    monkeypatch.setenv("ROCM_ATTN_SKIP_MODULES", "lm_head,proj")
    c = Config.from_env()
    assert c.quantization == "none" and c.skip_modules == ("lm_head", "proj")
    with pytest.raises(ValueError, match="unknown rocm_attn option"):
        Config.from_env(quantisation="none")
    with pytest.raises(ValueError, match="quantization"):
        Config.from_env(quantization="int4")


def test_bool_and_int_options_are_checked(monkeypatch):
    """A bool option given as text used to be kept as that (truthy) string: strict="false" meant strict, and
    ROCM_ATTN_FUSE_PROJECTIONS=enable turned fusion off. Both are refused now; the usual spellings parse."""
    for name in ("strict", "fuse_projections", "fast_accum", "rewrite_attention"):
        with pytest.raises(ValueError, match=f"{name}='false'; expected True or False"):
            Config.from_env(**{name: "false"})
    with pytest.raises(ValueError, match="expected an int"):
        Config(extend_workspace_tokens="4096")
    for raw, value in (("off", False), ("0", False), ("No", False), ("on", True), ("1", True), ("TRUE", True)):
        monkeypatch.setenv("ROCM_ATTN_FUSE_PROJECTIONS", raw)
        assert Config.from_env().fuse_projections is value
    monkeypatch.setenv("ROCM_ATTN_FUSE_PROJECTIONS", "enable")
    with pytest.raises(ValueError, match="ROCM_ATTN_FUSE_PROJECTIONS='enable'; expected one of"):
        Config.from_env()
    monkeypatch.setenv("ROCM_ATTN_FUSE_PROJECTIONS", "1")
    monkeypatch.setenv("ROCM_ATTN_EXTEND_WORKSPACE_TOKENS", "lots")
    with pytest.raises(ValueError, match="ROCM_ATTN_EXTEND_WORKSPACE_TOKENS='lots'; expected an int"):
        Config.from_env()


def test_export_has_the_rewrites(layer):
    model, x = layer
    ep = rocm_attn.export(model, (x,))
    assert isinstance(ep, torch.export.ExportedProgram)
    targets = [str(n.target) for n in ep.graph.nodes]
    assert sum("rocm_attn.flash_attention" in t for t in targets) == 1
    assert sum("rocm_attn.ptpc_scaled_mm" in t for t in targets) == 4  # qkv, o, gate_up, down
    with torch.no_grad():
        assert rel_err(ep.module()(x)[0], model(x)) < 6e-2  # outputs come back as a tuple
    assert ep.rocm_attn_outputs == ["output"]  # the model returns one tensor


def test_export_names_its_flat_outputs():
    """The program returns Dynamo's flat outputs: for a HF causal LM with its cache on, the cache's tensors
    first and the logits last. ep.rocm_attn_outputs says which is which."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)).eval()
    ids = torch.randint(1, 128, (2, 10))
    ep = rocm_attn.export(model, (ids,), options={"quantization": "none"})
    assert ep.rocm_attn_outputs.count("logits") == 1 and len(ep.rocm_attn_outputs) == 5  # + k and v x 2 layers
    with torch.no_grad():
        out = ep.module()(ids)[ep.rocm_attn_outputs.index("logits")]
        assert rel_err(out, model(ids).logits) < 1e-5
    ep = rocm_attn.export(model, (ids,), kwargs={"use_cache": False}, options={"quantization": "none"})
    assert ep.rocm_attn_outputs == ["logits"]


def test_cli_explain(capsys):
    from rocm_attn.cli import main

    assert (
        main(["explain", "llama", "--layers", "1", "--seq-len", "6", "--json", "--quantization", "none"]) == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["attention_rewritten"] == d["attention_total"] == 1


def test_cli_env(capsys, monkeypatch):
    """`rocm-attn env`: platform, fp8 format, each op's providers with a reason when unusable, and the
    environment switches in effect."""
    from rocm_attn.cli import main

    monkeypatch.setenv("ROCM_ATTN_EAGER_PLANS", "0")
    assert main(["env", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fp8_dtype"] in ("float8_e4m3fn", "float8_e4m3fnuz") and d["fp8_max"] in (448.0, 240.0)
    assert d["ops"]["ptpc_linear"]["torch"] == "usable" and "aiter" in d["ops"]["ptpc_linear"]
    assert d["switches"]["ROCM_ATTN_EAGER_PLANS"] == "0" and "TRITON_ATTN" in d["attention_backends"]
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "ROCM_ATTN_EAGER_PLANS=0" in out and "ptpc_linear" in out and "UNKNOWN" not in out
    monkeypatch.setenv("ROCM_ATTN_QUANTIZATON", "none")  # misspelt: read by nothing
    assert main(["env"]) == 0
    assert "UNKNOWN (rocm_attn reads no such variable): ROCM_ATTN_QUANTIZATON" in capsys.readouterr().out


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_compiled_graph_reused_for_other_weights_compiles_again():
    """Dynamo runs one compiled graph for every instance of a module class (parameters are inputs, not
    guarded): each decoder layer compiled on its own, or one compiled function over two models. The FP8
    weights are quantized at compile time, so a graph called with other parameters compiles again for them
    (with a warning); before, every layer ran the first one's weights (0.31 off)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layers = [Block().eval() for _ in range(3)]
    x = torch.randn(8, 64)
    for layer in layers:
        layer.compile(backend="rocm_attn", options={"quantization": "ptpc_fp8"})
    with torch.no_grad(), pytest.warns(UserWarning, match="other weights than it quantized"):
        errs = [rel_err(layer(x), layer.forward(x)) for layer in layers]
    assert max(errs) < 3e-2, errs
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # each set of weights is kept: no new compile on the second pass
        assert [rel_err(layer(x), layer.forward(x)) for layer in layers] == errs


def test_weights_updated_in_place_after_compile():
    """load_state_dict after compiling (the same Parameter objects, new values): the compiled FP8 graph used
    to keep the weights it was compiled with (1.5 off); it now compiles again."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="rocm_attn", options={"quantization": "ptpc_fp8"})
    x = torch.randn(8, 64)
    with torch.no_grad():
        compiled(x)
        model.load_state_dict({k: torch.randn_like(v) / 8 for k, v in model.state_dict().items()})
        with pytest.warns(UserWarning, match="other weights than it quantized"):
            out = compiled(x)
        assert rel_err(out, model(x)) < 5e-2  # the FP8 budget on randn; the old weights: ~1


def test_dump_dir_keeps_every_graph(tmp_path):
    """torch.compile with dump_dir and a graph break: each graph used to be written as graph_0 and report.json
    to hold the last one only. Now graph_0 and graph_1, and one report listing both linears."""
    class TwoGraphs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

        def forward(self, x):
            x = self.a(x)
            torch._dynamo.graph_break()
            return self.b(x)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(TwoGraphs().eval(), backend="rocm_attn",
                      options={"dump_dir": str(tmp_path), "skip_modules": ()})(torch.randn(4, 64))
    assert sorted(p.name for p in tmp_path.glob("graph_*")) == ["graph_0", "graph_1"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["module"] for g in report["graphs"] for s in g["sites"]] == ["a", "b"]


def test_stacked_expert_weights_get_a_report_line():
    """A 3-D weight the graph multiplies with (transformers 5's fused MoE experts) is not rewritten; the report
    used to leave it out (Mixtral: "10/11 linears" with 86% of the GEMM weights unlisted). Conv weights are
    not GEMM weights: no line."""
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.experts = nn.Parameter(torch.randn(4, 16, 16))
            self.conv = nn.Conv1d(16, 16, 3, padding=1)

        def forward(self, x):  # x [B, 16]
            h = torch.bmm(self.experts, self.proj(x).t().expand(4, 16, x.shape[0]))
            return self.conv(h).sum(0).t()

    report = rocm_attn.explain(Experts().eval(), torch.randn(3, 16), options={"skip_modules": ()})
    lines = [s for s in report.sites() if s.kind == "linear"]
    assert sorted((s.pattern, s.rewritten) for s in lines) == [("linear", True), ("stacked", False)], lines
    stacked = next(s for s in lines if not s.rewritten)
    assert "3-D weight (4, 16, 16)" in stacked.reason and stacked.pattern == "stacked"
