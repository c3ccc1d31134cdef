"""Session 30: MoE routers on the GPU (H100). A tiny random Qwen3-MoE (transformers' TopKRouter, an F.linear in the
graph) in bf16: the compile path's report keeps the router, and a patched model's generate (compiled decode, CUDA
graphs) gives the same greedy tokens as the patched model run eagerly (compile=False), whose routers are bf16.

    python benchmarks/experiments_s30/moe_router_gpu.py --out $OUT/moe_router.json
"""

import argparse
import copy
import json

import torch
import transformers as T

import rocm_attn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")  # cpu: a dry run (decode is not compiled there)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = T.Qwen3MoeConfig(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                           num_experts=8, num_experts_per_tok=2, pad_token_id=0)
    base = T.Qwen3MoeForCausalLM(cfg).to(args.device, torch.bfloat16).eval()
    ids = torch.randint(1, 512, (2, 12), device=args.device)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__, "transformers": T.__version__}

    report = rocm_attn.explain(base, ids)
    result["router_sites"] = [(s.module, s.rewritten, s.reason) for s in report.sites()
                              if s.kind == "linear" and s.module.endswith("mlp.gate")]

    def greedy(model):
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                                  do_sample=False, pad_token_id=0)[:, ids.shape[1]:]

    eager = greedy(rocm_attn.patch(copy.deepcopy(base), compile=False))
    compiled_model = rocm_attn.patch(copy.deepcopy(base))
    compiled = greedy(compiled_model)
    compiled_again = greedy(compiled_model)
    result["tokens_equal_compiled_vs_eager"] = bool(torch.equal(eager, compiled))
    result["tokens_equal_second_compiled_call"] = bool(torch.equal(compiled, compiled_again))
    result["token_agreement"] = float((eager == compiled).float().mean())
    recent = rocm_attn.passes.report.recent
    result["decode_graph_router_sites"] = [(s.module, s.rewritten, s.reason) for r in recent for s in r.sites()
                                           if s.kind == "linear" and s.module.endswith("mlp.gate")]
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
