"""Session 29 GPU checks of the audit's fixes (H100): writes JSON lines to $OUT/s29_checks.jsonl.

    python benchmarks/experiments_s29/gpu_checks.py --out $OUT/s29_checks.jsonl

1. regional compile: 4 identical blocks (Llama-8B-sized linears) each compiled with backend=rocm_attn
   (ptpc_fp8, Triton kernels, default and reduce-overhead modes): every block's output vs its own eager bf16
   output (the FP8 budget), the recompile warnings, and the steady-state time of the 4 blocks;
2. the per-call cost of the weight check (_RecompileOnNewWeights) with 64 / 224 / 480 checked tensors;
3. a patched tiny Llama: generate() (compiled decode, CUDA graphs) equals unpatched, then model.to(fp16) and
   generate() again, then a reset cache with another batch;
4. the cost of the paged cache's mask check at prefill (8 x 1024 and 1 x 8192 tokens, a 1280 / 8448-wide mask).
"""
import argparse
import copy
import json
import os
import time
import traceback
import warnings

import torch
import torch.nn as nn

import rocm_attn
from rocm_attn.testing import rel_err


def record(path, **row):
    print(json.dumps(row), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


class Block(nn.Module):
    def __init__(self, d=4096, f=14336):
        super().__init__()
        self.up, self.down = nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def gpu_ms(fn, iters=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def regional(out):
    for mode in (None, "reduce-overhead"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        blocks = [Block().cuda().to(torch.bfloat16).eval() for _ in range(4)]
        x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
        refs = [b.forward(x) for b in blocks]
        options = {"quantization": "ptpc_fp8", **({"mode": mode} if mode else {})}  # the backend takes mode there
        compiled = [torch.compile(b, backend="rocm_attn", options=options) for b in blocks]
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.time()
            errs = [rel_err(c(x), r) for c, r in zip(compiled, refs)]
            first_s = time.time() - t0
            for _ in range(3):  # steady state: no new compile
                errs2 = [rel_err(c(x), r) for c, r in zip(compiled, refs)]
            ms = gpu_ms(lambda: [c(x) for c in compiled])
        n_warn = sum("other weights than it quantized" in str(w.message) for w in caught)
        record(out, check="regional_compile", mode=mode, errs=errs, errs_again=errs2,
               recompile_warnings=n_warn, first_pass_s=round(first_s, 1), ms_per_4_blocks=ms)


def check_cost(out):
    from rocm_attn.backend import _RecompileOnNewWeights

    for n in (64, 224, 480):
        ts = [torch.empty(4, device="cuda") for _ in range(n)]
        args = tuple(ts) + (torch.empty(2, device="cuda"),)
        guard = _RecompileOnNewWeights(None, args, None, None, list(range(n)), lambda *a: None)
        guard(*args)
        t0 = time.perf_counter()
        for _ in range(2000):
            guard(*args)
        us = (time.perf_counter() - t0) / 2000 * 1e6
        record(out, check="weight_check_cost", tensors=n, us_per_call=round(us, 2))


def generate_checks(out):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, pad_token_id=0)
    ref = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16).eval()
    pat = rocm_attn.patch(copy.deepcopy(ref), quantization="none")
    kw = dict(do_sample=False, pad_token_id=0, max_new_tokens=16, min_new_tokens=16)
    ids = torch.randint(3, 512, (2, 12), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    same = []
    for _ in range(2):
        a, b = pat.generate(ids, attention_mask=mask, **kw), ref.generate(ids, attention_mask=mask, **kw)
        same.append(int((a == b).all(1).sum()))
    pat.to(torch.float16)
    ref.to(torch.float16)
    a, b = pat.generate(ids, attention_mask=mask, **kw), ref.generate(ids, attention_mask=mask, **kw)
    same.append(int((a == b).all(1).sum()))
    cache = rocm_attn.RocmAttnCache(pat, max_batch_size=2, max_cache_len=64)
    pat.generate(ids, attention_mask=mask, past_key_values=cache, **kw)
    cache.reset()
    one = ids[1:]
    a, b = pat.generate(one, past_key_values=cache, **kw), ref.generate(one, **kw)
    same.append(int((a == b).all(1).sum()))
    record(out, check="generate_lifecycle", rows_equal=same, of=[2, 2, 2, 1],
           kept_cache_dtype=str(pat._rocm_attn_generate_cache.kv[0].dtype))


def mask_check_cost(out):
    for B, S, Kv in ((8, 1024, 1280), (1, 8192, 8448)):
        m = torch.ones(B, 1, S, Kv, dtype=torch.bool, device="cuda").tril()
        idx = torch.arange(S, device="cuda")

        def work():
            seen = m[:, 0]
            future = seen[..., 1:].triu().any(-1)
            return torch.stack([seen[:, idx, idx].long(), seen.sum(-1), future]).cpu()

        def old():
            return m[:, 0][:, idx, idx].cpu()

        record(out, check="mask_check_cost", shape=[B, S, Kv], ms_with_check=gpu_ms(work), ms_before=gpu_ms(old))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parser_only = os.environ.get("S29_ONLY")
    for fn in (check_cost, mask_check_cost, generate_checks, regional):
        if parser_only and fn.__name__ != parser_only:
            continue
        try:
            fn(args.out)
        except Exception as exc:
            record(args.out, check=fn.__name__, error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc()[-2000:])


if __name__ == "__main__":
    main()
