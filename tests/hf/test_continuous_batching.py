"""model.generate_batch (HF continuous batching) on a patched tiny Llama (fp32, CPU, torch reference kernels).

Requests of different lengths, a long prompt chunked over several steps and two prompts sharing a prefix, on
16-token pages: HF's scheduler mixes prefills, extends (prompt chunks, shared prefixes) and decodes in one
batch, and every step goes through rocm_attn.attention(). Greedy tokens of each request must equal the
unpatched model's generate() on that prompt alone; PTPC-FP8 tokens must be greedy choices of the fp32 model
up to the FP8 budget (teacher-forced on the tokens CB chose)."""

import copy
import dataclasses

import pytest
import torch
from rocm_attn.kernels.attention import available_attention_backends
from transformers import (
    ContinuousBatchingConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import rocm_attn
from rocm_attn.continuous_batching import CB_ATTN_NAME

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
)  # no EOS: every request makes all its tokens
NEW_TOKENS = 16
# the pages' field is page_size in transformers >= 5.2x, block_size in 5.17
_PAGE = (
    "page_size"
    if "page_size" in {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    else "block_size"
)


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()


def requests():
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(2, 128, (36,), generator=g).tolist()  # two full 16-token pages HF can share
    lengths = (5, 37, 9, 50)  # 37 and 50 need more than one step at 32 batch tokens
    return [torch.randint(2, 128, (n,), generator=g).tolist() for n in lengths] + [
        shared + [5, 6],
        shared + [7],
    ]


def cb_config(**kw):
    # a small cache and batch: several steps, each mixing requests in different phases
    return ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=32, **{_PAGE: 16}, **kw)


def generate_batch(model, prompts, **kw):
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0)
    out = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=cb_config(), **kw)
    assert len(out) == len(prompts)
    tokens = []
    for i in range(len(prompts)):
        result = out[f"req_{i}"]
        assert result.error is None, f"request {i} failed: {result.error}"
        tokens.append(list(result.generated_tokens))
    return tokens


def hf_greedy(model, prompt):
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("backend", ["TRITON_ATTN", "ROCM_AITER_FA", "ROCM_ATTN"])
def test_generate_batch_token_identical_to_unpatched(backend):
    if not available_attention_backends().get(backend, {}).get("registered", False):
        pytest.skip(f"{backend} not registered in this build")
    ref_model = tiny_llama()
    model = rocm_attn.patch(
        copy.deepcopy(ref_model), quantization="none", attention_backend=backend, compile=False
    )
    prompts = requests()
    tokens = generate_batch(model, prompts)
    for i, prompt in enumerate(prompts):
        assert tokens[i] == hf_greedy(ref_model, prompt), (
            f"{backend}: request {i} (prompt {len(prompt)}) differs"
        )

    stats = model.rocm_attn_cb_stats
    assert stats.backend == backend and stats.steps > NEW_TOKENS
    assert stats.mixed_steps > 0, "no step mixed decodes with prefills / extends"
    assert stats.split_totals["prefill"] >= 1 and stats.split_totals["extend"] >= 2
    assert stats.split_totals["decode"] >= len(prompts) * (NEW_TOKENS - 2)
    # the manager gave the model its attention back: plain generate() works as before
    assert model.config._attn_implementation == "rocm_attn"
    assert hf_greedy(model, prompts[0]) == tokens[0]


def test_generate_batch_ptpc_fp8_within_budget():
    ref_model = tiny_llama()
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="ptpc_fp8", compile=False)
    prompts = requests()[:4]
    tokens = generate_batch(model, prompts)
    for prompt, new in zip(prompts, tokens, strict=True):
        ids = torch.tensor([prompt + new])
        with torch.no_grad():
            logits = ref_model(ids).logits[
                0, len(prompt) - 1 : -1
            ]  # the fp32 model's logits for each new token
        chosen = logits.gather(1, torch.tensor(new)[:, None])[:, 0]
        # each CB token is the fp32 argmax, or within the FP8 budget of it (a near tie flipped)
        gap = (logits.max(1).values - chosen) / logits.abs().max(1).values
        assert float(gap.max()) < 5e-2, f"PTPC token far from the fp32 greedy choice: gaps {gap.tolist()}"


def test_generate_batch_rejects_what_it_cannot_run():
    model = rocm_attn.patch(tiny_llama(), quantization="none", compile=False)
    gen = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=-1)
    with pytest.raises(ValueError, match="use_cuda_graph"):
        model.init_continuous_batching(
            generation_config=gen, continuous_batching_config=cb_config(use_cuda_graph=True)
        )
    assert model.config._attn_implementation == "rocm_attn"

    torch.manual_seed(0)
    sliding = Qwen3ForCausalLM(
        Qwen3Config(
            **SMALL,
            head_dim=16,
            use_sliding_window=True,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
    ).eval()
    sliding = rocm_attn.patch(sliding, quantization="none", compile=False)
    with pytest.raises(NotImplementedError, match="full attention only"):
        sliding.generate_batch([[3, 4, 5]], generation_config=gen, continuous_batching_config=cb_config())
    assert sliding.config._attn_implementation == "rocm_attn"

    # the CB attention name outside continuous batching (no paged cache): a clear error, not a wrong answer
    model.config._attn_implementation = CB_ATTN_NAME
    with pytest.raises(RuntimeError, match="PagedAttentionCache"):
        model(torch.tensor([[3, 4, 5]]))
