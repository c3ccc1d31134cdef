"""passes/patched_linear_split.py: a patched model's ptpc_linear calls become one shared activation quant per
input + ptpc_scaled_mm per linear (one per q/k/v and gate/up group, whose weights patch() lays out as adjacent
rows of one buffer), with the output unchanged; through the whole backend the shared quants then fuse into the
RMSNorms (post-grad norm_quant) and down_proj's into SiLU*mul, as for an unpatched model."""

import pytest
import torch
import transformers as T
from rocm_attn.passes import report as report_mod

import rocm_attn
from rocm_attn.patch import FP8Linear, _share_projection_storage
from rocm_attn.testing import capture_passes, count_calls, rel_err

OPS = torch.ops.rocm_attn
LAYERS = 2


def patched_llama(dtype=torch.float32, **options):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                        num_attention_heads=4, num_key_value_heads=2)
    model = T.LlamaForCausalLM(cfg).to(dtype).eval()
    rocm_attn.patch(model, quantization="ptpc_fp8", compile=False, **options)
    return model, torch.randint(1, 128, (2, 9))


@pytest.mark.parametrize("fuse_projections", [True, False])
def test_split_shares_the_quant_and_keeps_the_output(fuse_projections):
    model, ids = patched_llama(fuse_projections=fuse_projections)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    out, gm, gr = capture_passes(lambda i: model(input_ids=i, use_cache=False).logits, ids,
                                 fuse_projections=fuse_projections)
    assert count_calls(gm, OPS.ptpc_linear.default, OPS.ptpc_linear) == 0
    # fused: q/k/v, o_proj, gate/up, down_proj; apart: the 7 linears
    assert count_calls(gm, OPS.ptpc_scaled_mm.default) == (4 if fuse_projections else 7) * LAYERS
    assert gr.fusions.get("shared_weight_gemm", 0) == (3 * LAYERS if fuse_projections else 0)
    # one quant per distinct input: q/k/v's, o_proj's, gate/up's, down_proj's
    assert count_calls(gm, OPS.per_token_quant_fp8.default) == 4 * LAYERS
    assert gr.fusions["shared_activation_quant"] == 3 * LAYERS
    assert [p.matches for p in gr.passes if p.name == "patched_linear_split"] == [7 * LAYERS]
    assert model.rocm_attn_report.projection_groups == (2 * LAYERS if fuse_projections else 0)
    assert rel_err(out, ref) < 1e-6


def test_patch_lays_projection_groups_out_in_one_buffer():
    """q/k/v and gate/up: each module's wq / w_scale are row views of one buffer per group (no extra memory,
    the same values as quantizing each alone); the eager output is unchanged."""
    model, ids = patched_llama()
    apart, _ = patched_llama(fuse_projections=False)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)):
        for attr in ("wq", "w_scale"):
            tensors = [getattr(m, attr) for m in group]
            assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
            assert all(t.is_contiguous() for t in tensors)
    assert model.rocm_attn_report.weight_bytes_after == apart.rocm_attn_report.weight_bytes_after
    for (name, a), (_, b) in zip(model.named_buffers(), apart.named_buffers(), strict=True):
        assert torch.equal(a.float(), b.float()), name
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, apart(input_ids=ids, use_cache=False).logits)


class TwoInputs(torch.nn.Module):
    """q_proj / k_proj whose weights share one buffer but that read different inputs: two GEMMs, not one."""

    def __init__(self):
        super().__init__()
        self.q_proj = FP8Linear(torch.nn.Linear(32, 16))
        self.k_proj = FP8Linear(torch.nn.Linear(32, 8))

    def forward(self, x, y):
        return torch.cat([self.q_proj(x), self.k_proj(y)], dim=-1)


def test_shared_buffer_with_different_inputs_stays_two_gemms():
    torch.manual_seed(0)
    mod = TwoInputs()
    report = rocm_attn.PatchReport("TwoInputs", "ptpc_fp8", "-", "-")
    _share_projection_storage(mod, report)
    assert report.projection_groups == 1
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    with torch.no_grad():
        ref = mod(x, y)
    out, gm, gr = capture_passes(mod, x, y)
    assert count_calls(gm, OPS.ptpc_scaled_mm.default) == 2
    assert "shared_weight_gemm" not in gr.fusions
    assert rel_err(out, ref) < 1e-6


def test_same_input_without_a_shared_buffer_stays_apart():
    """Two linears on one input whose weights are separate tensors: one shared quant, two GEMMs."""
    torch.manual_seed(0)
    mod = TwoInputs()
    x = torch.randn(3, 32)
    with torch.no_grad():
        ref = mod(x, x)
    out, gm, gr = capture_passes(lambda a: mod(a, a), x)
    assert count_calls(gm, OPS.ptpc_scaled_mm.default) == 2
    assert count_calls(gm, OPS.per_token_quant_fp8.default) == 1
    assert rel_err(out, ref) < 1e-6


def test_unpatched_graphs_are_untouched():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16)
    x = torch.randn(3, 32)
    _, gm, gr = capture_passes(lin, x, quantization="none")
    assert [p.matches for p in gr.passes if p.name == "patched_linear_split"] == [0]
    assert "shared_activation_quant" not in gr.fusions


@pytest.mark.slow
def test_backend_fuses_the_shared_quants_into_the_norms():
    model, ids = patched_llama(torch.bfloat16)
    # a fresh Inductor compile: an FX graph cache hit (same graph earlier) skips the post-grad pass
    with torch.no_grad(), torch._inductor.config.patch({"fx_graph_cache": False}):
        ref = model(input_ids=ids, use_cache=False).logits
        torch._dynamo.reset()
        out = torch.compile(model, backend="rocm_attn", dynamic=False)(input_ids=ids, use_cache=False).logits
    fusions = report_mod.recent[-1].graphs[0].fusions
    # input norm of each layer (+ the residual add after layer 0) and the post-attention norm with its add
    assert fusions.get("rms_norm_quant_fp8", 0) + fusions.get("fused_add_rms_norm_quant_fp8", 0) == 2 * LAYERS
    assert fusions["shared_activation_quant"] == 3 * LAYERS
    assert fusions["shared_weight_gemm"] == 3 * LAYERS
    assert fusions["silu_mul_quant_fp8"] == LAYERS  # SiLU(gate) * up with down_proj's quant, gate/up fused
    assert rel_err(out, ref) < 3e-2  # bf16 + the fused norm quantizes its fp32 result: a few fp8 steps apart


@pytest.mark.parametrize("fast_accum", [False, True])
def test_fast_accum_reaches_every_gemm(fast_accum):
    """Config.fast_accum: every ptpc_scaled_mm of the graph, patched (split) or unpatched (rewritten),
    carries it; by default the kwarg is absent (graphs unchanged)."""
    model, ids = patched_llama()
    logits = lambda i: model(input_ids=i, use_cache=False).logits  # noqa: E731
    _, gm, _ = capture_passes(logits, ids, fast_accum=fast_accum)
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16)
    _, gm2, _ = capture_passes(lin, torch.randn(3, 32), fast_accum=fast_accum)
    for g, n in ((gm, 4 * LAYERS), (gm2, 1)):
        mms = [node for node in g.graph.nodes if node.target is OPS.ptpc_scaled_mm.default]
        assert len(mms) == n
        assert all(node.kwargs.get("fast_accum", False) is fast_accum for node in mms)


def test_patch_fast_accum_is_carried_by_the_modules():
    """patch(fast_accum=True): each FP8Linear calls ptpc_linear with it (eager), and the split keeps it on every
    GEMM even when the compile's own config leaves it off; on CPU the accumulation is exact either way."""
    model, ids = patched_llama(fast_accum=True)
    fp8 = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 7 * LAYERS and all(m.fast_accum for m in fp8)
    precise, _ = patched_llama()
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits
        assert torch.equal(out, precise(input_ids=ids, use_cache=False).logits)
    _, gm, _ = capture_passes(lambda i: model(input_ids=i, use_cache=False).logits, ids)
    mms = [node for node in gm.graph.nodes if node.target is OPS.ptpc_scaled_mm.default]
    assert len(mms) == 4 * LAYERS and all(node.kwargs.get("fast_accum") is True for node in mms)
