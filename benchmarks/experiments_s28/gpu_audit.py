"""Session 28 GPU audit: attention ops at head dims other than 64/128, and tiny patched HF families on the GPU.
Writes JSON incrementally to --out."""
import argparse, json, time, traceback

import torch
import torch.nn.functional as F

import rocm_attn
from rocm_attn.testing import make_mixed_batch, reference_attention, rel_err

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--parts", default="A,B,D")
args = p.parse_args()
res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "rows": []}


def save():
    json.dump(res, open(args.out, "w"), indent=1)


def record(**row):
    res["rows"].append(row)
    print(row, flush=True)
    save()


p2 = None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
HEAD_DIMS = [64, 80, 96, 112, 128, 192, 256]
specs = [(0, 100), (300, 1), (1000, 1), (50, 20), (0, 1), (17, 5), (129, 64)]

if "A" in args.parts:
    info = rocm_attn.available_attention_backends()
    backs = [(n, lay) for n, i in info.items() if i["registered"] for lay in i["layouts"]]
    for D in HEAD_DIMS:
        for backend, layout in backs:
            for dtype in (torch.bfloat16, torch.float16):
                try:
                    b = make_mixed_batch(specs, 2, 4, D, 16, dtype, layout, DEV, seed=D)
                    out = rocm_attn.attention(b.q, b.k, b.v, b.kv_cache, b.query_start_loc, b.seq_lens,
                                              b.block_table, b.slot_mapping, scale=b.scale, backend=backend,
                                              metadata=b.metadata)
                    torch.cuda.synchronize() if DEV == "cuda" else None if DEV == "cuda" else None
                    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale)
                    record(part="A", D=D, backend=backend, layout=layout, dtype=str(dtype),
                           err=rel_err(out, ref), nan=bool(out.isnan().any()))
                except Exception as e:
                    record(part="A", D=D, backend=backend, layout=layout, dtype=str(dtype),
                           exc=f"{type(e).__name__}: {str(e)[:300]}")

if "B" in args.parts:
    for D in HEAD_DIMS:
        for dtype in (torch.bfloat16, torch.float16):
            for masked in (False, True):
                try:
                    g = torch.Generator(device=DEV).manual_seed(D)
                    B, Hq, Hkv, S = 2, 8, 2, (77 if masked else 600)
                    q = torch.randn(B, Hq, S, D, device=DEV, generator=g).to(dtype)
                    k = torch.randn(B, Hkv, S, D, device=DEV, generator=g).to(dtype)
                    v = torch.randn(B, Hkv, S, D, device=DEV, generator=g).to(dtype)
                    kv = torch.ones(B, S, dtype=torch.bool, device=DEV)
                    if masked:
                        kv[0, :9] = False  # left padding on row 0
                    out = torch.ops.rocm_attn.flash_attention(q, k, v, None, D ** -0.5, True, 0, 0.0,
                                                              kv if masked else None)
                    kr = k.double().repeat_interleave(Hq // Hkv, 1)
                    vr = v.double().repeat_interleave(Hq // Hkv, 1)
                    mask = torch.ones(S, S, dtype=torch.bool, device=DEV).tril()[None, None] & kv[:, None, None, :]
                    ref = F.scaled_dot_product_attention(q.double(), kr, vr, attn_mask=mask, scale=D ** -0.5)
                    valid = mask.any(-1, keepdim=True).expand_as(ref)  # fully masked query rows excluded
                    err = rel_err(out.double()[valid], ref[valid])
                    record(part="B", D=D, dtype=str(dtype), masked=masked, err=err,
                           nan=bool(out.isnan().any()))
                except Exception as e:
                    record(part="B", D=D, dtype=str(dtype), masked=masked,
                           exc=f"{type(e).__name__}: {str(e)[:300]}")

if "D" in args.parts:
    import transformers as T
    base = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)
    fams = {
        "llama_d96": (T.LlamaConfig, T.LlamaForCausalLM, dict(base, head_dim=96)),
        "gemma_d256": (T.GemmaConfig, T.GemmaForCausalLM, dict(base, head_dim=256)),
        "gemma2_d256": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(base, head_dim=256, sliding_window=16,
                                                                 query_pre_attn_scalar=256)),
        "phi_d80": (T.PhiConfig, T.PhiForCausalLM, dict(base, hidden_size=320, partial_rotary_factor=0.5)),
        "qwen3_d128": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(base, head_dim=128)),
        "mistral_d64": (T.MistralConfig, T.MistralForCausalLM, dict(base, sliding_window=16)),
    }
    for name, (cc, mc, kw) in fams.items():
        for quant in ("none", "ptpc_fp8"):
            for compile_ in (False, True) if name == "llama_d96" else (False,):
                t0 = time.time()
                try:
                    torch.manual_seed(0)
                    ref_model = mc(cc(**kw)).to(DEV, torch.bfloat16).eval()
                    model = mc(cc(**kw)).to(DEV, torch.bfloat16).eval()
                    model.load_state_dict(ref_model.state_dict())
                    ids = torch.randint(3, 512, (2, 24), device=DEV)
                    mask = torch.ones_like(ids)
                    mask[0, :5] = 0
                    gen = dict(max_new_tokens=40, do_sample=False, attention_mask=mask, pad_token_id=0)
                    with torch.no_grad():
                        want = ref_model.generate(ids, **gen)
                        logits_ref = ref_model(ids, attention_mask=mask).logits.float()
                    rocm_attn.patch(model, quantization=quant, compile=compile_)
                    with torch.no_grad():
                        logits = model(ids, attention_mask=mask).logits.float()
                        got = model.generate(ids, **gen)
                    new_w, new_g = want[:, 24:], got[:, 24:]
                    match = (new_w == new_g).float().mean().item()
                    first_div = [int((new_w[i] != new_g[i]).nonzero()[0]) if (new_w[i] != new_g[i]).any() else -1
                                 for i in range(2)]
                    margins = []
                    with torch.no_grad():  # the unpatched model's top-2 logit gap where the tokens part
                        full_logits = ref_model(want, attention_mask=torch.cat(
                            [mask, torch.ones_like(want[:, 24:])], 1)).logits.float()
                    for i in range(2):
                        j = first_div[i]
                        if j >= 0:
                            top = full_logits[i, 24 + j - 1].topk(2).values
                            margins.append(float(top[0] - top[1]))
                    m = mask.bool()
                    record(part="D", family=name, quant=quant, compile=compile_, top2_margin_at_divergence=margins,
                           logit_err=rel_err(logits[m], logits_ref[m]), token_match=match,
                           first_divergence=first_div, secs=round(time.time() - t0, 1),
                           report=str(model.rocm_attn_report)[:600])
                except Exception as e:
                    record(part="D", family=name, quant=quant, compile=compile_,
                           exc=f"{type(e).__name__}: {str(e)[:400]}", tb=traceback.format_exc()[-1500:])
if "E" in args.parts:  # Session 28's patch() fallbacks on the GPU: HF's cache in generate(), tokens as unpatched
    import transformers as T
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, pad_token_id=0)
    fams = {
        "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                        dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                             kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
                             v_head_dim=16, n_group=1, topk_group=1)),
        "llama4": ("Llama4TextConfig", "Llama4ForCausalLM", dict(head_dim=16, intermediate_size_mlp=128,
                                                                  num_local_experts=2)),
        "lfm2": ("Lfm2Config", "Lfm2ForCausalLM", dict(layer_types=["conv", "full_attention"])),
    }
    for name, (cc, mc, kw) in fams.items():
        for quant in ("none", "ptpc_fp8"):
            try:
                if not hasattr(T, mc):
                    record(part="E", family=name, skipped="not in this transformers")
                    continue
                torch.manual_seed(0)
                ref_model = getattr(T, mc)(getattr(T, cc)(**dict(small, **kw))).to(DEV, torch.bfloat16).eval()
                import copy
                model = rocm_attn.patch(copy.deepcopy(ref_model), quantization=quant, compile=True,
                                        quantize_embeddings=False)
                ids = torch.randint(1, 128, (2, 9), device=DEV)
                gen = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones_like(ids))
                with torch.no_grad():
                    a, b = ref_model.generate(ids, **gen), model.generate(ids, **gen)
                record(part="E", family=name, quant=quant, token_match=(a == b).float().mean().item(),
                       report=str(model.rocm_attn_report)[-300:])
            except Exception as e:
                record(part="E", family=name, quant=quant, exc=f"{type(e).__name__}: {str(e)[:400]}")
print("done")
