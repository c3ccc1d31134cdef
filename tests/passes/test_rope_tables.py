"""passes/rope_tables.py: in a graph whose attention was rewritten, every cos / sin (HF's RoPE tables) goes
through rocm_attn::materialize, so Inductor stores the table once instead of recomputing it inside every
layer's rope kernel; the output is unchanged, and graphs without a rewritten attention are left alone."""

import torch
import transformers as T
from rocm_attn.passes.rope_tables import materialize

import rocm_attn  # noqa: F401  (registers the ops)
from rocm_attn.testing import capture_passes, count_calls, rel_err

OPS = torch.ops.rocm_attn
LAYERS = 2


def tiny_llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                        num_attention_heads=4, num_key_value_heads=2)
    cfg._attn_implementation = "sdpa"
    return T.LlamaForCausalLM(cfg).eval(), torch.randint(1, 128, (2, 9))


def trig_nodes(gm):
    return [n for n in gm.graph.nodes if (n.op == "call_method" and n.target in ("cos", "sin"))
            or (n.op == "call_function" and n.target in (torch.cos, torch.sin))]


def test_cos_and_sin_are_materialized_once_and_the_output_kept():
    model, ids = tiny_llama()
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
    logits = lambda i: model(input_ids=i, use_cache=False).logits  # noqa: E731
    out, gm, gr = capture_passes(logits, ids, quantization="none")
    trig = trig_nodes(gm)
    assert len(trig) == 2  # one cos and one sin table for the whole model, not per layer
    assert count_calls(gm, OPS.materialize.default) == 2
    assert all(list(n.users)[0].target is OPS.materialize.default and len(n.users) == 1 for n in trig)
    assert gr.fusions["rope_tables_materialized"] == 2
    assert [p.matches for p in gr.passes if p.name == "rope_tables"] == [2]
    assert rel_err(out, ref) < 1e-5


def test_graphs_without_a_rewritten_attention_are_untouched():
    model, ids = tiny_llama()
    _, gm, gr = capture_passes(lambda i: model(input_ids=i, use_cache=False).logits, ids,
                               quantization="none", rewrite_attention=False)
    assert count_calls(gm, OPS.materialize.default) == 0 and len(trig_nodes(gm)) == 2
    assert "rope_tables_materialized" not in gr.fusions

    def plain(x):
        return torch.cos(x) + x.sin()

    x = torch.randn(4, 8)
    out, gm, _ = capture_passes(plain, x)
    assert count_calls(gm, OPS.materialize.default) == 0
    torch.testing.assert_close(out, plain(x))


def test_materialize_is_a_copy():
    x = torch.randn(3, 5)
    y = materialize(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    torch.library.opcheck(OPS.materialize.default, (x,))


def test_backend_compiles_with_the_tables():
    """Through Inductor (backend="rocm_attn"): same logits as eager within fp32 rounding."""
    model, ids = tiny_llama()
    with torch.no_grad(), torch._inductor.config.patch({"fx_graph_cache": False}):
        ref = model(input_ids=ids, use_cache=False).logits
        torch._dynamo.reset()
        out = torch.compile(model, backend="rocm_attn", dynamic=False,
                            options={"quantization": "none"})(input_ids=ids, use_cache=False).logits
    assert rel_err(out, ref) < 1e-4
