"""A tiny random Llama for the examples (no download). Real models: AutoModelForCausalLM.from_pretrained."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(layers: int = 2, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(dtype).eval()
