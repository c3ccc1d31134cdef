"""torch.compile(model, backend="rocm_attn"): no import needed after pip install (entry point).

    python examples/compile_model.py

The backend rewrites attention to rocm_attn ops and linears to PTPC-FP8 ops in the captured graph, then
hands it to Inductor. Options are rocm_attn.Config fields.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny import tiny_llama  # noqa: E402

from rocm_attn.testing import rel_err  # noqa: E402

model = tiny_llama()
ids = torch.randint(0, 128, (2, 16))
with torch.no_grad():
    ref = model(ids).logits
    compiled = torch.compile(model, backend="rocm_attn", options={"quantization": "ptpc_fp8"})
    out = compiled(ids).logits
err = rel_err(out, ref)
print(f"rocm_attn backend (ptpc_fp8) vs eager fp32 logits: relative error {err:.4f}")
assert err < 5e-2
