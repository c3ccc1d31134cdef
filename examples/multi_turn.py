"""Multi-turn chat on one paged cache: the second turn only computes its new tokens (the extend path).

    python examples/multi_turn.py [--new-tokens 8]

Pass the same RocmAttnCache to both generate() calls and the whole conversation as input_ids: the cache
already holds turn one, so turn two's prompt is attended as new tokens on top of cached context.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny import tiny_llama  # noqa: E402

import rocm_attn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--new-tokens", type=int, default=8)
args = parser.parse_args()

model = rocm_attn.patch(tiny_llama(), quantization="none", compile=False)
cache = rocm_attn.RocmAttnCache(model, max_cache_len=256)
kw = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

turn1 = torch.randint(1, 128, (1, 10))
out1 = model.generate(turn1, attention_mask=torch.ones_like(turn1), past_key_values=cache, **kw)
print("after turn 1:", cache.split_totals)
turn2 = torch.cat([out1, torch.randint(1, 128, (1, 6))], dim=1)  # the conversation so far + the new message
out2 = model.generate(turn2, attention_mask=torch.ones_like(turn2), past_key_values=cache, **kw)
print("after turn 2:", cache.split_totals, "(one extend: turn 2's prompt on the cached turn 1)")
fresh = model.generate(turn2, attention_mask=torch.ones_like(turn2), **kw)
print("turn 2 equals a fresh run on the whole conversation:", torch.equal(out2, fresh))
assert torch.equal(out2, fresh) and cache.split_totals["extend"] == 1
