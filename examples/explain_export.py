"""rocm_attn.explain: what was rewritten and why not; rocm_attn.export: an ExportedProgram with the rewrites.

    python examples/explain_export.py [--dump-dir DIR]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny import tiny_llama  # noqa: E402

import rocm_attn  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--dump-dir", default=None, help="write per-pass graphs + report.json here")
args = parser.parse_args()

model = tiny_llama()
ids = torch.randint(0, 128, (1, 8))
options = {"quantization": "ptpc_fp8", "dump_dir": args.dump_dir} if args.dump_dir else {"quantization": "ptpc_fp8"}
report = rocm_attn.explain(model, ids, options=options)
print(report)
program = rocm_attn.export(model, (ids,), options={"quantization": "ptpc_fp8"})
ops = sorted({str(n.target) for n in program.graph.nodes if "rocm_attn" in str(n.target)})
print("rocm_attn ops in the exported program:", ops)
