"""rocm_attn.patch + model.generate: a padded batch, greedy, vs. the unpatched model.

    python examples/patch_generate.py [--new-tokens 16] [--backend TRITON_ATTN]

generate() gets a paged RocmAttnCache automatically after patch(); padding tokens are neither cached
nor attended. With quantization="none" the tokens equal HF's; "ptpc_fp8" (the default) halves weights.
"""

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny import tiny_llama  # noqa: E402

import rocm_attn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--new-tokens", type=int, default=16)
parser.add_argument("--backend", default="TRITON_ATTN")
args = parser.parse_args()

model = tiny_llama()
ids = torch.randint(1, 128, (3, 12))
mask = torch.ones_like(ids)
mask[1, :4] = 0  # left padding
mask[2, :7] = 0
ids[mask == 0] = 0
kw = dict(attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
ref = model.generate(ids, **kw)

exact = rocm_attn.patch(copy.deepcopy(model), quantization="none", attention_backend=args.backend, compile=False)
fp8 = rocm_attn.patch(copy.deepcopy(model), quantization="ptpc_fp8", attention_backend=args.backend, compile=False)
print(fp8.rocm_attn_report)
same = (exact.generate(ids, **kw) == ref).all().item()
agree = (fp8.generate(ids, **kw)[:, 12:] == ref[:, 12:]).float().mean().item()
print(f"quantization='none': tokens identical to HF: {same}")
print(f"quantization='ptpc_fp8': greedy agreement with HF fp32 {agree * 100:.0f}% (random tiny model)")
assert same
