"""Whole tiny HF models (built from configs, no downloads): torch.compile(backend="rocm_attn")
vs eager, and the report's counts vs what the config implies. Batch 2 with padding (left for the
decoders, right for BERT); padded query rows are excluded from the comparison (their values
are undefined: HF gives a uniform average, SDPA NaN or 0)."""

import pytest
import torch
import transformers as T
from rocm_attn.passes import report as report_mod

from rocm_attn.testing import rel_err

pytestmark = pytest.mark.slow

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
)
LAYERS = 2
# family: (config class, model class, config kwargs, linears per layer, extra eligible linears, skipped)
FAMILIES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, TINY, 7, 0, 1),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(TINY, sliding_window=4), 7, 0, 1),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, TINY, 7, 0, 1),
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(TINY, head_dim=16), 7, 0, 1),
    "gemma2": (
        T.Gemma2Config,
        T.Gemma2ForCausalLM,
        dict(TINY, head_dim=16, sliding_window=4, query_pre_attn_scalar=16),
        7,
        0,
        1,
    ),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(TINY, pad_token_id=0), 4, 0, 1),
    "gpt2": (
        T.GPT2Config,
        T.GPT2LMHeadModel,
        dict(
            n_embd=64,
            n_layer=LAYERS,
            n_head=4,
            vocab_size=128,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        4,
        0,
        1,
    ),
    "bert": (
        T.BertConfig,
        T.BertModel,
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            vocab_size=128,
        ),
        6,
        1,
        0,
    ),  # + pooler.dense; no lm_head
}
# FP8 budget on logits of random-weight tiny models (e4m3 has 3 mantissa bits; Gemma 2 scales its
# embeddings by sqrt(hidden) and soft-caps, which amplifies the same per-GEMM error).
FP8_BUDGET = {"gemma2": 1.2e-1}


def build(name):
    cfg_cls, model_cls, kwargs, *_ = FAMILIES[name]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kwargs)).eval()
    ids = torch.randint(1, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    if name == "bert":
        mask[0, 8:] = 0  # right padding
        kwargs = {"attention_mask": mask}
    else:
        mask[0, :4] = 0  # left padding
        kwargs = {"attention_mask": mask, "use_cache": False}
    return model, ids, kwargs, mask.bool()


def compiled_run(model, ids, kwargs, options):
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="rocm_attn", options=options, dynamic=False)(
            input_ids=ids, **kwargs
        )[0]
    return out, report_mod.recent[-1]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family(name):
    model, ids, kwargs, keep = build(name)
    _, _, _, per_layer, extra, skipped = FAMILIES[name]
    with torch.no_grad():
        ref = model(input_ids=ids, **kwargs)[0]

    # attention rewrite alone: exact up to fp32 rounding
    out, report = compiled_run(model, ids, kwargs, {"quantization": "none"})
    assert report.errors == []
    assert report.attention_total == LAYERS and report.attention_rewritten == LAYERS, str(report)
    assert report.linear_total == LAYERS * per_layer + extra + skipped and report.linear_rewritten == 0
    assert rel_err(out[keep], ref[keep]) < 1e-5

    # + PTPC FP8 linears: every eligible linear rewritten, the skipped ones say why
    out, report = compiled_run(model, ids, kwargs, {"quantization": "ptpc_fp8"})
    assert report.errors == []
    assert report.attention_rewritten == LAYERS
    assert report.linear_rewritten == LAYERS * per_layer + extra, str(report)
    not_done = [s for s in report.sites("linear") if not s.rewritten]
    assert len(not_done) == skipped and all("skip_modules" in s.reason for s in not_done)
    assert report.memory["fp8_bytes"] < 0.6 * report.memory["bf16_bytes"]
    assert torch.isfinite(out[keep]).all()
    assert rel_err(out[keep], ref[keep]) < FP8_BUDGET.get(name, 6e-2)


def test_eager_attention_implementation_and_per_tensor():
    """Llama with attn_implementation="eager" (the matmul/softmax chain) and per-tensor FP8."""
    model, ids, kwargs, keep = build("llama")
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = model(input_ids=ids, **kwargs)[0]
    out, report = compiled_run(model, ids, kwargs, {"quantization": "fp8_per_tensor"})
    assert {s.pattern for s in report.sites("attention")} == {"eager"}
    assert report.attention_rewritten == LAYERS and report.linear_rewritten == LAYERS * 7
    assert rel_err(out[keep], ref[keep]) < 8e-2


def test_no_recompile_across_sequence_lengths():
    """One automatic-dynamic recompile (the second length), then none: the passes handle symbolic S."""
    model, _, _, _ = build("llama")
    report_mod.recent.clear()  # bounded list: count from empty
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="rocm_attn")
    with torch.no_grad():
        for s in (6, 9, 13, 4):
            ids = torch.randint(1, 128, (2, s))
            out = compiled(input_ids=ids, use_cache=False)[0]
            assert rel_err(out, model(input_ids=ids, use_cache=False)[0]) < 6e-2
    compiles = list(report_mod.recent)
    assert len(compiles) == 2
    assert all(r.attention_rewritten == LAYERS and r.linear_rewritten == LAYERS * 7 for r in compiles)


@pytest.mark.full_inductor  # the generated C++ kernels too (tests/conftest.py)
def test_generate_with_kv_cache():
    """Prefill + decode graphs (DynamicCache update in front of the attention; decode is Sq = 1
    against the cached K/V): every attention rewritten, greedy tokens identical to eager."""
    model, ids, kwargs, _ = build("llama")
    mask = kwargs["attention_mask"]
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        report_mod.recent.clear()  # bounded list: count from empty
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward, backend="rocm_attn", options={"quantization": "none"})
        try:
            out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        finally:
            del model.forward
    assert torch.equal(out, ref)
    compiles = list(report_mod.recent)
    assert len(compiles) >= 2  # prefill and decode
    assert all(r.attention_rewritten == r.attention_total == LAYERS for r in compiles)
