"""rocm_attn.patch on kinds of HF models the paged cache or the kernels do not cover (tiny random configs, CPU):
each is refused before anything changes (attention sinks), or patched with generate() kept on HF's own cache and
a report note (MLA head sizes, chunked / conv layers), with greedy tokens equal to the unpatched model's; fused
MoE expert weights get a report note; model.to(dtype) after patch() keeps the fp8 weights; clear errors where a
model reads what an fp8 module does not hold."""

import copy

import pytest
import torch
import transformers as T

import rocm_attn
from rocm_attn.hf_cache import paged_cache_refusal

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, pad_token_id=0)


def build(config_name: str, model_name: str, **kwargs):
    if not hasattr(T, config_name) or not hasattr(T, model_name):
        pytest.skip(f"transformers {T.__version__} has no {model_name}")
    torch.manual_seed(0)
    return getattr(T, model_name)(getattr(T, config_name)(**dict(SMALL, **kwargs))).eval()


def greedy(model, ids, n=6):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)


def test_attention_sinks_are_refused_before_anything_changes():
    model = build("GptOssConfig", "GptOssForCausalLM", head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                  layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    implementation = model.config._attn_implementation
    with pytest.raises(NotImplementedError, match="sinks"):
        rocm_attn.patch(model)
    assert not any(isinstance(m, (rocm_attn.FP8Linear, rocm_attn.FP8Embedding)) for m in model.modules())
    assert model.config._attn_implementation == implementation and not hasattr(model, "rocm_attn_report")


def test_the_attention_function_never_drops_sinks():
    from rocm_attn.hf_cache import rocm_attn_attention

    q = torch.randn(1, 4, 3, 16)
    k = v = torch.randn(1, 2, 3, 16)
    with pytest.raises(NotImplementedError, match="sinks"):
        rocm_attn_attention(torch.nn.Module(), q, k, v, None, s_aux=torch.zeros(4))


FALLBACKS = {
    # MLA head sizes: K 24 (16 nope + 8 rope), V 16, config.head_dim 8
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                         n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=32,
                         qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_group=1, topk_group=1),
                    "K and V head sizes differ"),
    "llama4": ("Llama4TextConfig", "Llama4ForCausalLM",  # chunked attention layers
               dict(head_dim=16, intermediate_size_mlp=128, num_local_experts=2), "chunked_attention"),
    "lfm2": ("Lfm2Config", "Lfm2ForCausalLM", dict(layer_types=["conv", "full_attention"]), "conv"),
}


@pytest.mark.parametrize("family", list(FALLBACKS))
def test_models_the_paged_cache_cannot_hold_generate_on_hf_cache(family):
    config_name, model_name, kwargs, reason = FALLBACKS[family]
    reference = build(config_name, model_name, **kwargs)
    assert reason in paged_cache_refusal(reference.config)
    model = rocm_attn.patch(copy.deepcopy(reference), quantization="none", compile=True)
    report = str(model.rocm_attn_report)
    assert "HF's KV cache in generate" in report and reason in report
    assert "compiled decode     off" in report and model.generation_config.compile_config is None
    if family == "lfm2":  # its conv weights are 3-D but no GEMM weights: no MoE note
        assert "3+ dims" not in str(rocm_attn.patch(copy.deepcopy(reference), compile=False).rocm_attn_report)
    ids = torch.randint(1, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy(model, ids), greedy(reference, ids))
    with pytest.raises(NotImplementedError, match="DynamicCache"):
        rocm_attn.RocmAttnCache(model)


def test_llama_keeps_the_paged_cache():
    model = build("LlamaConfig", "LlamaForCausalLM")
    assert paged_cache_refusal(model.config) is None
    assert "standard paged KV cache in generate" in str(rocm_attn.patch(model, compile=False).rocm_attn_report)


def test_a_model_reading_the_embedding_weight_gets_a_clear_error():
    """Llama 4's forward reads embed_tokens.weight.device: an FP8Embedding has no .weight, and says what to do."""
    _, model_name, kwargs, _ = FALLBACKS["llama4"]
    model = rocm_attn.patch(build("Llama4TextConfig", model_name, **kwargs), compile=False)
    ids = torch.randint(1, 128, (1, 5))
    with pytest.raises(AttributeError, match="quantize_embeddings=False"), torch.no_grad():
        model(ids)
    model = rocm_attn.patch(build("Llama4TextConfig", model_name, **kwargs), compile=False, quantize_embeddings=False)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_fused_moe_experts_get_a_report_note():
    model = build("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2)
    experts = [p for p in model.parameters() if p.dim() == 3]
    if not experts:
        pytest.skip("this transformers keeps Mixtral's experts as nn.Linear layers")
    report = rocm_attn.patch(model, compile=False).rocm_attn_report
    assert any("fused MoE experts" in note and "nn.Linear layers only" in note for note in report.notes)
    assert all(p.dtype == torch.float32 for p in experts)  # kept as they were
    plain = rocm_attn.patch(build("MixtralConfig", "MixtralForCausalLM", num_local_experts=4,
                                  num_experts_per_tok=2), quantization="none", compile=False)
    assert not any("MoE" in note for note in plain.rocm_attn_report.notes)


@pytest.mark.parametrize("cast", ["to", "half", "bfloat16"])
def test_a_cast_after_patch_keeps_the_fp8_weights(cast):
    """model.to(dtype) / .half() / .bfloat16() after patch(): the fp8 weights and fp32 scales keep their dtype
    and values, the bias and the embedding's output follow the cast, and the model still runs."""
    reference = build("LlamaConfig", "LlamaForCausalLM", attention_bias=True)
    model = rocm_attn.patch(copy.deepcopy(reference), compile=False)
    q_proj = model.model.layers[0].self_attn.q_proj
    wq, w_scale = q_proj.wq.clone(), q_proj.w_scale.clone()
    dtype = torch.bfloat16 if cast == "bfloat16" else torch.float16
    model = model.to(dtype) if cast == "to" else getattr(model, cast)()
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.wq.dtype == wq.dtype and torch.equal(q_proj.wq.view(torch.uint8), wq.view(torch.uint8))
    assert q_proj.w_scale.dtype == torch.float32 and torch.equal(q_proj.w_scale, w_scale)
    assert q_proj.bias.dtype == dtype
    embedding = model.model.embed_tokens
    assert embedding.wq.element_size() == 1 and embedding.w_scale.dtype == torch.float32
    ids = torch.randint(1, 128, (2, 6))
    assert embedding(ids).dtype == dtype
    with torch.no_grad():
        out = model(ids).logits.float()
        ref = reference.to(dtype)(ids).logits.float()
    assert torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 1e-1  # the FP8 budget of a tiny random model


def test_output_attentions_error_names_the_way_out():
    model = rocm_attn.patch(build("LlamaConfig", "LlamaForCausalLM"), quantization="none", compile=False)
    with pytest.raises(NotImplementedError, match="attn_implementation='eager'"):
        model.generate(torch.randint(1, 128, (1, 5)), max_new_tokens=2, do_sample=False, output_attentions=True,
                       return_dict_in_generate=True)


def test_linear_subclasses_with_their_own_forward_are_kept():
    """Llama 4's router is an nn.Linear subclass returning (scores, logits): an FP8Linear in its place would
    return one tensor, so it is kept, with a report note, and the model runs."""
    _, model_name, kwargs, _ = FALLBACKS["llama4"]
    reference = build("Llama4TextConfig", model_name, **kwargs)
    model = rocm_attn.patch(copy.deepcopy(reference), compile=False, quantize_embeddings=False)
    router = model.model.layers[0].feed_forward.router
    assert type(router).__name__ == "Llama4Router"
    report = model.rocm_attn_report
    assert "model.layers.0.feed_forward.router" in report.linears_skipped
    assert any(note.startswith("Llama4Router layers") for note in report.notes)
    ids = torch.randint(1, 128, (2, 6))
    with torch.no_grad():
        out, ref = model(ids).logits, reference(ids).logits
    assert (out - ref).norm() / ref.norm() < 1e-1


@pytest.mark.parametrize("family,kwargs,routers", [
    ("Afmoe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1, head_dim=16),
     ["model.layers.1.mlp.router.gate"]),
    ("HunYuanMoEV1", dict(num_experts=4, moe_topk=2, head_dim=16),
     ["model.layers.0.mlp.gate.wg", "model.layers.1.mlp.gate.wg"]),
    ("JetMoe", dict(num_local_experts=4, num_experts_per_tok=2, kv_channels=16),
     [f"model.layers.{i}.{part}.router.layer" for i in (0, 1) for part in ("mlp", "self_attention.experts")]),
])
def test_moe_router_linears_stay_unquantized(family, kwargs, routers):
    """MoE routers that are nn.Linear layers keep their dtype (vLLM keeps them unquantized): fp8 router logits
    can send tokens to other experts. The compile path that patch()'s decode runs leaves them too."""
    model = build(f"{family}Config", f"{family}ForCausalLM", **kwargs)
    dtypes = {name: model.get_submodule(name).weight.dtype for name in routers}
    report = rocm_attn.patch(model, compile=False, quantize_embeddings=False).rocm_attn_report
    assert {name: type(model.get_submodule(name)) for name in routers} == {name: torch.nn.Linear for name in routers}
    assert {name: model.get_submodule(name).weight.dtype for name in routers} == dtypes
    assert sorted(n for n in report.linears_skipped if n != "lm_head") == sorted(routers)
    assert any(f"{len(routers)} MoE router linears" in note for note in report.notes), report.notes
    assert report.linears_replaced > 0
    if family == "HunYuanMoEV1":  # the graph patch()'s compiled decode sees: its routers are found there too
        ids = torch.randint(1, 128, (1, 6))
        sites = rocm_attn.explain(model, ids).sites()
        assert [s.rewritten for s in sites if s.module in routers] == [False] * len(routers), sites
