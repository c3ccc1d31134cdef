"""Config.quantize_embeddings: FP8Embedding (fp8 table, one fp32 scale per row) against an independent float64
reference, and patch() with it on tiny random HF models: the input embedding replaced, bytes down, logits
within the FP8 budget, tied embeddings shared with a PTPC lm_head (or kept when the lm_head stays bf16)."""

import copy

import pytest
import torch
from rocm_attn.kernels import fp8_dtype, fp8_max
from rocm_attn.kernels.per_token_quant import scale_floor
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import rocm_attn
from rocm_attn.config import DEFAULT_SKIP_MODULES, Config
from rocm_attn.testing import rel_err

HALF_ULP = 2.0 ** -4  # e4m3: 3 mantissa bits, a correct rounding is within half an ulp
SUBNORMAL_STEP = 2.0 ** -9  # smallest e4m3 step (in units of the scale)
NO_LM_HEAD = tuple(m for m in DEFAULT_SKIP_MODULES if m != "lm_head")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, pad_token_id=0)


def tiny_llama(**overrides):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**SMALL, **overrides})).eval()


def table(vocab=40, dim=24, dtype=torch.bfloat16):
    """randn rows, a zero row, a row 1000x larger, and a row with one 1000x outlier element."""
    w = torch.randn(vocab, dim)
    w[3] = 0.0
    w[7] *= 1000.0
    w[11, 5] *= 1000.0
    return nn.Embedding(vocab, dim, padding_idx=3, _weight=w.to(dtype))


def reference_bound(w: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Per element: how far a per-row fp8 round trip (then a cast to out_dtype) may land from w, in float64,
    from the row max alone (not from the code under test)."""
    w64 = w.double()
    scale = (w64.abs().amax(1, keepdim=True) / fp8_max()).clamp_min(scale_floor(fp8_max()))
    return (HALF_ULP + torch.finfo(out_dtype).eps) * 1.01 * w64.abs() + SUBNORMAL_STEP / 2 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ids_shape", [(5,), (3, 4), (2, 3, 2), (0,), (2, 0)])
def test_fp8_embedding_vs_float64_reference(dtype, ids_shape):
    emb = table(dtype=dtype)
    fp8 = rocm_attn.FP8Embedding(emb)
    assert fp8.wq.dtype == fp8_dtype() and fp8.wq.shape == (40, 24)
    assert fp8.w_scale.dtype == torch.float32 and fp8.w_scale.shape == (40, 1)
    ids = torch.randint(0, 40, ids_shape)
    if ids.numel():
        ids.view(-1)[:4] = torch.tensor([3, 7, 11, 0])[: ids.numel()]  # the zero and outlier rows
    out = fp8(ids)
    assert out.dtype == dtype and out.shape == (*ids_shape, 24)
    ref = emb.weight.double()[ids]
    assert ((out.double() - ref).abs() <= reference_bound(emb.weight, dtype)[ids]).all()
    # the whole table: the zero row stays zero, outlier rows keep their own scale, randn rows ~e4m3's floor
    full = fp8(torch.arange(40))
    assert (full[3] == 0).all()
    normal = [r for r in range(40) if r not in (3, 7, 11)]
    assert rel_err(full[normal], emb.weight.detach()[normal]) < 0.04
    assert rel_err(full[7], emb.weight.detach()[7]) < 0.04


def test_fp8_embedding_repr_and_sharing():
    emb = table()
    fp8 = rocm_attn.FP8Embedding(emb)
    assert repr(fp8) == "FP8Embedding(40, 24, padding_idx=3, quantization=fp8 per row)"
    shared = rocm_attn.FP8Embedding(emb, (fp8.wq, fp8.w_scale))
    assert shared.wq is fp8.wq and torch.equal(shared(torch.arange(40)), fp8(torch.arange(40)))


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_patch_quantizes_the_input_embedding():
    ref = tiny_llama()
    plain = rocm_attn.patch(copy.deepcopy(ref), compile=False, quantize_embeddings=False)
    model = rocm_attn.patch(copy.deepcopy(ref), compile=False, quantize_embeddings=True)
    assert isinstance(model.model.embed_tokens, rocm_attn.FP8Embedding)
    assert model.get_input_embeddings() is model.model.embed_tokens
    r = model.rocm_attn_report
    assert r.embeddings_quantized == 1 and r.embedding_bytes_before == 128 * 64 * 4
    assert r.embedding_bytes_after == 128 * 64 + 128 * 4
    assert (r.weight_bytes_before, r.weight_bytes_after) == (plain.rocm_attn_report.weight_bytes_before,
                                                             plain.rocm_attn_report.weight_bytes_after)
    assert "embedding weights   0.0 MiB -> 0.0 MiB (fp8)" in str(r)
    assert weight_bytes(model) == weight_bytes(plain) - r.embedding_bytes_before + r.embedding_bytes_after
    ids = torch.randint(1, 128, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[mask == 0] = 0
    with torch.no_grad():  # test_patch's PTPC budget
        expect = ref(ids, attention_mask=mask).logits[mask.bool()]
        assert rel_err(model(ids, attention_mask=mask).logits[mask.bool()], expect) < 5e-2
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                         do_sample=False, pad_token_id=0)
    assert out.shape == (3, 16) and torch.equal(out[:, :10], ids)


def test_on_by_default_off_on_request_and_with_quantization_none():
    model = rocm_attn.patch(tiny_llama(), compile=False)
    assert isinstance(model.model.embed_tokens, rocm_attn.FP8Embedding)
    assert model.rocm_attn_report.embeddings_quantized == 1
    kept = rocm_attn.patch(tiny_llama(), compile=False, quantize_embeddings=False)
    assert type(kept.model.embed_tokens) is nn.Embedding and kept.rocm_attn_report.embeddings_quantized == 0
    assert "(kept)" in str(kept.rocm_attn_report)
    none = rocm_attn.patch(tiny_llama(), quantization="none", compile=False)
    assert type(none.model.embed_tokens) is nn.Embedding and none.rocm_attn_report.embeddings_quantized == 0


def test_env_variable(monkeypatch):
    monkeypatch.setenv("ROCM_ATTN_QUANTIZE_EMBEDDINGS", "0")
    assert Config.from_env().quantize_embeddings is False
    model = rocm_attn.patch(tiny_llama(), compile=False)
    assert type(model.model.embed_tokens) is nn.Embedding
    monkeypatch.setenv("ROCM_ATTN_QUANTIZE_EMBEDDINGS", "1")
    assert Config.from_env().quantize_embeddings is True


def test_tied_embedding_with_a_bf16_lm_head_is_kept():
    """An fp8 embedding next to the bf16 lm_head that reads the same table would add memory, not save it."""
    model = rocm_attn.patch(tiny_llama(tie_word_embeddings=True), compile=False, quantize_embeddings=True)
    assert type(model.model.embed_tokens) is nn.Embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert any("tied to lm_head, which stays bf16" in n for n in model.rocm_attn_report.notes)


def test_tied_embedding_shares_the_ptpc_lm_head_weight():
    ref = tiny_llama(tie_word_embeddings=True)
    head_only = rocm_attn.patch(copy.deepcopy(ref), compile=False, skip_modules=NO_LM_HEAD,
                                quantize_embeddings=False)
    model = rocm_attn.patch(copy.deepcopy(ref), compile=False, skip_modules=NO_LM_HEAD,
                            quantize_embeddings=True)
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, rocm_attn.FP8Embedding) and isinstance(head, rocm_attn.FP8Linear)
    assert emb.wq.data_ptr() == head.wq.data_ptr() and emb.w_scale.data_ptr() == head.w_scale.data_ptr()
    # the fp32 table is gone (lm_head's FP8Linear held an fp8 copy; now both read one)
    assert not any(p.shape == (128, 64) for p in model.parameters())
    table_bytes = 128 * 64 * 4
    assert weight_bytes(model) == weight_bytes(head_only) - table_bytes
    ids = torch.randint(1, 128, (2, 9))
    with torch.no_grad():  # vs the same recipe with a bf16 table: the embedding's rounding alone
        assert rel_err(model(ids).logits, head_only(ids).logits) < 5e-2
        assert rel_err(model(ids).logits, ref(ids).logits) < 1e-1  # + every linear and the lm_head in fp8
    # per-tensor lm_head: another scale than a table's per-row ones, so nothing to share
    per_tensor = rocm_attn.patch(copy.deepcopy(ref), quantization="fp8_per_tensor", compile=False,
                                 skip_modules=NO_LM_HEAD, quantize_embeddings=True)
    assert type(per_tensor.model.embed_tokens) is nn.Embedding
    assert any("per-tensor scale" in n for n in per_tensor.rocm_attn_report.notes)


def test_fp8_per_tensor_linears_get_a_per_row_table():
    model = rocm_attn.patch(tiny_llama(), quantization="fp8_per_tensor", compile=False,
                            quantize_embeddings=True)
    assert model.model.embed_tokens.w_scale.shape == (128, 1)


def test_embeddings_it_cannot_replace_are_kept_with_a_note():
    class Scaled(nn.Embedding):  # Gemma's kind: a forward of its own
        def forward(self, ids):
            return super().forward(ids) * 8.0

    model = tiny_llama()
    model.model.embed_tokens = Scaled(128, 64)
    rocm_attn.patch(model, compile=False, quantize_embeddings=True)
    assert type(model.model.embed_tokens) is Scaled
    assert any("Scaled is not a plain nn.Embedding" in n for n in model.rocm_attn_report.notes)
    capped = tiny_llama()
    capped.model.embed_tokens.max_norm = 1.0
    rocm_attn.patch(capped, compile=False, quantize_embeddings=True)
    assert type(capped.model.embed_tokens) is nn.Embedding
    assert any("max_norm" in n for n in capped.rocm_attn_report.notes)


@pytest.mark.slow
def test_compiled_with_the_rocm_attn_backend():
    """The fp8 gather passes through the backend's FX passes and Inductor: same logits as eager, and the
    norms still fuse with the shared activation quants."""
    from rocm_attn.passes import report as report_mod

    model = tiny_llama().to(torch.bfloat16)
    rocm_attn.patch(model, compile=False, quantize_embeddings=True)
    ids = torch.randint(1, 128, (2, 9))
    with torch.no_grad(), torch._inductor.config.patch({"fx_graph_cache": False}):
        ref = model(input_ids=ids, use_cache=False).logits
        torch._dynamo.reset()
        out = torch.compile(model, backend="rocm_attn", dynamic=False)(input_ids=ids, use_cache=False).logits
    fusions = report_mod.recent[-1].graphs[0].fusions
    assert fusions.get("rms_norm_quant_fp8", 0) + fusions.get("fused_add_rms_norm_quant_fp8", 0) == 4
    assert rel_err(out, ref) < 3e-2  # as test_patched_linear_split: the fused norm quantizes its fp32 result


def test_eval_variant_unties_the_embedding_first():
    """rocm-attn eval's ptpc_fp8_embed on a tied model: the input embedding gets its own weight (then fp8),
    the lm_head keeps the bf16 table, as on an untied model; rows carry the paired change vs ptpc_fp8."""
    from rocm_attn.perplexity import evaluate, make_variant

    base = tiny_llama(tie_word_embeddings=True).to(torch.bfloat16)
    model = make_variant(base, "ptpc_fp8_embed")
    assert isinstance(model.model.embed_tokens, rocm_attn.FP8Embedding) and type(model.lm_head) is nn.Linear
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert base.lm_head.weight is base.model.embed_tokens.weight  # the reference is left as it was
    models = {v: make_variant(base, v) for v in ("bf16", "ptpc_fp8", "ptpc_fp8_embed")}
    rows = {r["variant"]: r for r in evaluate(torch.randint(0, 128, (200,)), models, 100, 100)["rows"]}
    lo, hi = rows["ptpc_fp8_embed"]["vs_ptpc_fp8_ci95"]
    assert lo <= rows["ptpc_fp8_embed"]["vs_ptpc_fp8_pct"] <= hi and "vs_ptpc_fp8_pct" not in rows["ptpc_fp8"]
