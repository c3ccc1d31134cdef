"""torch.compile(backend="rocm_attn") on a tiny HF DeepseekV3: every attention site is rewritten to
mla_attention_dense (pattern "mla"), and the compiled model matches eager: prefill logits (the
up-projected flash path) and greedy decode with HF's cache (the absorbed latent path) token-identical."""

import pytest
import torch

import rocm_attn

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, DynamicCache  # noqa: E402


def tiny_model(layers=2):
    cfg = DeepseekV3Config(
        vocab_size=96, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=24, qk_rope_head_dim=16,
        qk_nope_head_dim=32, v_head_dim=24, max_position_embeddings=256, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=layers,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model


def greedy(forward, model, ids, steps):
    cache = DynamicCache(config=model.config)
    logits = forward(input_ids=ids, past_key_values=cache, use_cache=True).logits
    all_logits, toks = [logits[:, -1]], []
    for _ in range(steps):
        nxt = all_logits[-1].argmax(-1, keepdim=True)
        toks.append(nxt)
        all_logits.append(forward(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1])
    return torch.cat(toks, 1), torch.stack(all_logits, 1)


@torch.no_grad()
def test_compiled_matches_eager_and_counts_mla_sites():
    model = tiny_model(layers=1)
    ids = torch.randint(0, 96, (2, 20))  # 20 queries: the up-projected flash path; then decodes: absorbed
    ref_toks, ref_logits = greedy(model, model, ids, 3)
    report = rocm_attn.passes.report.Report()
    with rocm_attn.passes.report.collecting(report):
        compiled = torch.compile(model, backend="rocm_attn", options={"quantization": "none"})
        toks, logits = greedy(compiled, model, ids, 3)
    assert torch.equal(toks, ref_toks)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    sites = report.sites("attention")
    assert sites and all(s.pattern == "mla" and s.rewritten for s in sites), str(report)
    assert all("kv_b_proj" not in s.module for s in report.sites("linear"))  # absorbed, never quantized


def test_dense_op_paths_agree_with_sdpa():
    """mla_attention_dense, absorbed (Sq <= 16) and up-projected, vs SDPA on the up-projected K/V."""
    from rocm_attn.kernels.mla_attention import MLAWeights

    B, H, P, R, L, V = 2, 3, 16, 8, 24, 12
    w = MLAWeights.from_kv_b_proj(torch.randn(H * (P + V), L) / 5, H, P, V)
    for sq, sk, causal, mask in [(1, 30, False, None), (4, 30, False, "bool"), (20, 20, True, None),
                                 (20, 26, False, "float"), (16, 16, True, None)]:
        q = torch.randn(B, H, sq, P + R, dtype=torch.float64)
        kv_c = torch.randn(B, 1, sk, L, dtype=torch.float64)
        k_pe = torch.randn(B, 1, sk, R, dtype=torch.float64)
        kv = torch.einsum("bosl,hdl->bhsd", kv_c, w.kv_b_weight.double().view(H, P + V, L))
        k = torch.cat([kv[..., :P], k_pe.expand(B, H, sk, R)], -1)
        m = None
        if mask == "bool":
            m = torch.rand(B, 1, sq, sk) > 0.3
            m[..., 0] = True
        elif mask == "float":
            m = torch.randn(B, 1, sq, sk, dtype=torch.float64)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, kv[..., P:], attn_mask=m, is_causal=causal,
                                                                scale=0.2)
        q32, c32, p32 = q.float(), kv_c.float(), k_pe.float()
        out = torch.ops.rocm_attn.mla_attention_dense(q32, c32, p32, w.w_uk, w.w_uv_t,
                                                      m.float() if mask == "float" else m, 0.2, causal)
        assert out.shape == (B, H, sq, V)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_dense_op_opcheck():
    args = (torch.randn(1, 2, 3, 24), torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 8), torch.randn(2, 16, 16),
            torch.randn(2, 16, 12), None, 0.3, False)
    torch.library.opcheck(torch.ops.rocm_attn.mla_attention_dense.default, args)
    with pytest.raises(ValueError, match="do not agree"):
        torch.ops.rocm_attn.mla_attention_dense(torch.randn(1, 3, 3, 24), *args[1:])


class CatStyleMLA(torch.nn.Module):
    """expand_kv written with torch.cat (older / other HF MLA models) instead of new_empty + copy_."""

    def __init__(self):
        super().__init__()
        self.kv_b_proj = torch.nn.Linear(32, 4 * (16 + 12), bias=False)

    def forward(self, q, kv_c, k_rot, mask):  # q [B,4,Sq,24], kv_c [B,1,Sk,32], k_rot [B,1,Sk,8]
        B, _, S, _ = kv_c.shape
        kv = self.kv_b_proj(kv_c).view(B, S, -1, 28).transpose(1, 2)
        k_nope, v = torch.split(kv, [16, 12], dim=-1)
        k = torch.cat((k_nope, k_rot.expand(-1, 4, -1, -1)), dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)


@torch.no_grad()
def test_cat_style_with_padding_mask():
    m = CatStyleMLA().eval()
    mask = torch.ones(2, 1, 3, 20, dtype=torch.bool)
    mask[1, ..., :5] = False  # left padding
    args = (torch.randn(2, 4, 3, 24), torch.randn(2, 1, 20, 32), torch.randn(2, 1, 20, 8), mask)
    report = rocm_attn.passes.report.Report()
    with rocm_attn.passes.report.collecting(report):
        out = torch.compile(m, backend="rocm_attn", options={"quantization": "none"})(*args)
    (site,) = report.sites("attention")
    assert site.pattern == "mla" and site.rewritten, str(report)
    torch.testing.assert_close(out, m(*args), rtol=1e-5, atol=1e-5)
