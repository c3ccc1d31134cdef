"""Continuous batching (transformers' generate_batch) on a patched model.

    python examples/continuous_batching.py [--new-tokens 12]

HF's scheduler packs requests in different phases into each step: new prompts (prefill), prompt chunks
(extend), one token for running requests (decode). On a patched model every step's attention is
rocm_attn.attention() on HF's paged cache, with the backend's decode / extend / prefill split.
"""

import argparse
import os
import sys

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny import tiny_llama  # noqa: E402

import rocm_attn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--new-tokens", type=int, default=12)
args = parser.parse_args()

reference = tiny_llama()
model = rocm_attn.patch(tiny_llama(), quantization="none", compile=False)  # ptpc_fp8 by default

g = torch.Generator().manual_seed(0)
prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (4, 40, 11, 23)]
generation = GenerationConfig(
    max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
)
# a small cache (HF sizes it from free memory otherwise), 32 tokens per step: the 40-token prompt is chunked
batching = ContinuousBatchingConfig(num_blocks=32, max_batch_tokens=32)
outputs = model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching)

same = True
for i, prompt in enumerate(prompts):
    result = outputs[f"req_{i}"]
    ids = torch.tensor([prompt])
    expected = reference.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=args.new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )  # no EOS stop, like above
    same &= result.error is None and list(result.generated_tokens) == expected[0, len(prompt) :].tolist()
    print(f"request {i}: prompt {len(prompt):2d} tokens -> {list(result.generated_tokens)}")
stats = model.rocm_attn_cb_stats
print(
    f"{stats.steps} steps, {stats.mixed_steps} mixing decodes with prefills/extends; sequences per path: "
    f"{stats.split_totals}"
)
print("tokens identical to HF generate:", same)
assert same
