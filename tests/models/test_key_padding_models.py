"""HF padding masks on whole tiny models (torch.compile(backend="rocm_attn"), quantization="none"):
a 2-D attention_mask with left padding becomes flash_attention's key_valid vector (the report says so)
and the outputs on non-padded positions equal eager's; a user's 4-D mask and packed sequences keep
the 4-D mask path."""

import pytest
import torch
import transformers as T
from rocm_attn.passes import report as report_mod

from rocm_attn.testing import rel_err

pytestmark = pytest.mark.slow

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)
FAMILIES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, TINY),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(TINY, head_dim=16)),
    # eager attention (its default) with a sliding-window layer and soft-capping
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM,
               dict(TINY, head_dim=16, sliding_window=4, query_pre_attn_scalar=16)),
    "bert": (T.BertConfig, T.BertModel, dict(TINY, num_key_value_heads=4)),
}
B, S = 3, 11


def build(name):
    cfg_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kwargs)).eval()
    ids = torch.randint(1, 128, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, :3], mask[2, :7] = 0, 0  # left padding, two lengths
    return model, ids, mask


def run_both(model, ids, **kwargs):
    if not isinstance(model, T.BertModel):
        kwargs["use_cache"] = False
    with torch.no_grad():
        ref = model(input_ids=ids, **kwargs)[0]
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="rocm_attn", options={"quantization": "none"}, dynamic=False)
        out = compiled(input_ids=ids, **kwargs)[0]
    return out, ref, report_mod.recent[-1]


def mask_notes(report):
    return [s.detail.get("mask", "") for s in report.sites("attention")]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_left_padding_uses_key_padding(name):
    model, ids, mask = build(name)
    out, ref, report = run_both(model, ids, attention_mask=mask)
    assert report.errors == [] and report.attention_rewritten == report.attention_total == 2
    notes = mask_notes(report)
    assert all(n.startswith("key padding from attention_mask") for n in notes), notes
    assert all(("bidirectional" in n) == (name == "bert") for n in notes), notes
    if name == "gemma2":
        assert any("sliding window 4" in n for n in notes), notes
    keep = mask.bool()
    assert rel_err(out[keep], ref[keep]) < 1e-5


def test_user_4d_mask_keeps_the_4d_path():
    model, ids, mask = build("llama")
    m4 = mask.bool()[:, None, None, :] & torch.ones(S, S, dtype=torch.bool).tril()
    m4[0, :, 6:, 2] = False  # a custom pattern: no 2-D mask can say this
    out, ref, report = run_both(model, ids, attention_mask=m4)
    notes = mask_notes(report)
    assert report.attention_rewritten == 2 and all(n.startswith("4-D bool tensor") for n in notes), notes
    keep = mask.bool()
    assert rel_err(out[keep], ref[keep]) < 1e-5


def test_packed_sequences_keep_the_4d_path():
    """position_ids that restart (packed sequences, no attention_mask): HF's packed-sequence mask."""
    model, ids, _ = build("llama")
    pos = torch.cat([torch.arange(4), torch.arange(S - 4)]).expand(B, S)
    out, ref, report = run_both(model, ids, position_ids=pos)
    notes = mask_notes(report)
    assert report.attention_rewritten == 2 and all(n.startswith("4-D bool tensor") for n in notes), notes
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma2"])
def test_no_mask_no_cache_is_plain_causal(name):
    """No attention_mask and no cache (a plain compiled forward): under tracing HF cannot rule out packed
    sequences, so its mask carries a packed-sequence term on the position rows it made from cache_position
    (and, in newer transformers, causal on those positions). They are one contiguous run, so the mask is
    plain causal [+ window]: flash_attention gets no mask at all (causal block skipping, no mask reads)."""
    model, ids, _ = build(name)
    out, ref, report = run_both(model, ids)
    notes = mask_notes(report)
    assert report.errors == [] and report.attention_rewritten == report.attention_total == 2
    assert all(n.startswith("no key padding (causal") for n in notes), notes
    if name == "gemma2":
        assert any("sliding window 4" in n for n in notes), notes
    assert rel_err(out, ref) < 1e-5


def run_patched(name, **kwargs):
    """rocm_attn.patch()'s path: HF calls flash_attention itself, with the mask it built; the compile's
    attention pass proves that mask as above (patterns/attention_patched.py). Reference: the unpatched
    model in eager mode."""
    import rocm_attn

    model, ids, mask = build(name)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False, **kwargs)[0]
    rocm_attn.patch(model, quantization="none", compile=False)
    with torch.no_grad():
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="rocm_attn", options={"quantization": "none"}, dynamic=False)
        out = compiled(input_ids=ids, use_cache=False, **kwargs)[0]
    return out, ref, report_mod.recent[-1], mask


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_patched_model_no_mask_is_plain_causal(name):
    out, ref, report, _ = run_patched(name)
    notes = mask_notes(report)
    assert report.errors == [] and report.attention_rewritten == report.attention_total == 2, notes
    assert all(n.startswith("no key padding (causal") for n in notes), notes
    if name == "gemma2":
        assert any("sliding window 4" in n for n in notes), notes
    assert rel_err(out, ref) < 1e-5


def test_patched_model_left_padding_uses_key_padding():
    _, _, mask = build("llama")
    out, ref, report, _ = run_patched("llama", attention_mask=mask)
    notes = mask_notes(report)
    assert report.attention_rewritten == 2
    assert all(n.startswith("key padding from attention_mask") for n in notes), notes
    keep = mask.bool()
    assert rel_err(out[keep], ref[keep]) < 1e-5


def test_patched_model_packed_sequences_keep_the_mask():
    pos = torch.cat([torch.arange(4), torch.arange(S - 4)]).expand(B, S)
    out, ref, report, _ = run_patched("llama", position_ids=pos)
    sites = report.sites("attention")
    assert len(sites) == 2 and not any(s.rewritten for s in sites)
    assert all("4-D mask kept" in s.reason for s in sites), [s.reason for s in sites]
    assert rel_err(out, ref) < 1e-5


def _as_dunder_methods(gm) -> int:
    """Rewrite operator.eq(a, b), operator.le(a, b), ... as a.__eq__(b), a.__le__(b): how torch 2.11's
    Dynamo records some of HF's mask comparisons (seen on the GPU image; torch 2.13 records operators)."""
    from rocm_attn.patterns.padding_mask import _DUNDER

    changed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _DUNDER and len(node.args) == 2:
            with gm.graph.inserting_before(node):
                method = gm.graph.call_method(_DUNDER[node.target], node.args)
            method.meta.update(node.meta)
            node.replace_all_uses_with(method)
            gm.graph.erase_node(node)
            changed += 1
    gm.recompile()
    return changed


@pytest.mark.parametrize("kwargs", [{}, {"attention_mask": "left"}], ids=["no_mask", "left_padding"])
def test_dunder_method_comparisons_are_proven(kwargs):
    """The same proofs when the graph's comparisons and & are dunder method calls."""
    from rocm_attn.passes import run_passes
    from rocm_attn.passes.report import GraphReport

    from rocm_attn.config import Config

    model, ids, mask = build("llama")
    if kwargs:
        kwargs = {"attention_mask": mask}
    seen = {}

    def backend(gm, example_inputs):
        seen["changed"] = _as_dunder_methods(gm)
        seen["report"] = GraphReport(0)
        run_passes(gm, example_inputs, Config(quantization="none"), seen["report"])
        return gm.forward

    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False, **kwargs)[0]
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend, dynamic=False)
        out = compiled(input_ids=ids, use_cache=False, **kwargs)[0]
    notes = [s.detail.get("mask", s.reason) for s in seen["report"].sites if s.kind == "attention"]
    assert seen["changed"] > 0 and len(notes) == 2, notes
    want = "key padding from attention_mask (causal)" if kwargs else "no key padding (causal"
    assert all(n.startswith(want) for n in notes), notes
    keep = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
    assert rel_err(out[keep], ref[keep]) < 1e-5
