"""passes/patched_linear_split.py: a patched model's ptpc_linear calls become one shared activation quant per
input + ptpc_scaled_mm per linear, with the output unchanged; through the whole backend the shared quants
then fuse into the RMSNorms (post-grad norm_quant) and down_proj's into SiLU*mul, as for an unpatched model."""

import pytest
import torch
import transformers as T
from rocm_attn.passes import report as report_mod
from rocm_attn.patch import FP8Linear

import rocm_attn
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


def test_split_shares_the_quant_and_keeps_the_output():
    model, ids = patched_llama()
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    out, gm, gr = capture_passes(lambda i: model(input_ids=i, use_cache=False).logits, ids)
    assert count_calls(gm, OPS.ptpc_linear.default, OPS.ptpc_linear) == 0
    assert count_calls(gm, OPS.ptpc_scaled_mm.default) == 7 * LAYERS
    # one quant per distinct input: q/k/v's, o_proj's, gate/up's, down_proj's
    assert count_calls(gm, OPS.per_token_quant_fp8.default) == 4 * LAYERS
    assert gr.fusions["shared_activation_quant"] == 3 * LAYERS
    assert [p.matches for p in gr.passes if p.name == "patched_linear_split"] == [7 * LAYERS]
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
    assert fusions["silu_mul_quant_fp8"] == LAYERS  # SiLU(gate) * up with down_proj's quant, gate/up apart
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
    for g, n in ((gm, 7 * LAYERS), (gm2, 1)):
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
    assert len(mms) == 7 * LAYERS and all(node.kwargs.get("fast_accum") is True for node in mms)
