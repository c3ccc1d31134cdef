"""rocm_attn.patch on tiny random HF models (fp32, CPU, torch reference kernels): greedy generation is
token-identical to the unpatched model on every attention backend, with and without padding; a second
turn on the same cache (the extend path) equals a fresh run; PTPC-FP8 logits stay within the FP8 budget."""

import copy

import pytest
import torch
from rocm_attn.kernels.attention import available_attention_backends
from transformers import (
    DynamicCache,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import rocm_attn
from rocm_attn.hf_cache import RocmAttnCache
from rocm_attn.testing import rel_err

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, pad_token_id=0)


def tiny(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=16)).eval()
    if family == "gemma":
        return GemmaForCausalLM(GemmaConfig(**SMALL, head_dim=16)).eval()
    if family == "mistral":  # a window shorter than the prompts: decode steps slide
        return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=5)).eval()
    if family == "gemma2":  # alternating sliding / full layers, attention soft-capping
        return Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=16, sliding_window=5,
                                              attn_logit_softcapping=20.0, final_logit_softcapping=30.0)).eval()
    raise ValueError(family)


def registered(backend):
    return available_attention_backends().get(backend, {}).get("registered", False)


def prompts(batch: int, length: int = 10, pads=(0, 3, 5)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : pads[row]] = 0  # left padding
    ids[mask == 0] = 0
    return ids, mask


def greedy(model, ids, mask, n=32, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, **kw)


CASES = [("llama", b) for b in ("TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN", "ROCM_AITER_FA", "ROCM_ATTN")]
CASES += [("qwen3", "TRITON_ATTN"), ("qwen3", "ROCM_AITER_FA"), ("gemma", "TRITON_ATTN"), ("gemma", "ROCM_ATTN")]


@pytest.mark.parametrize("family, backend", CASES)
def test_greedy_identical_to_unpatched(family, backend):
    if not registered(backend):
        pytest.skip(f"{backend} not registered in this build")
    ref_model = tiny(family)
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="none", attention_backend=backend, compile=False)
    for batch in (1, 3):
        ids, mask = prompts(batch)
        ref = greedy(ref_model, ids, mask)
        cache = RocmAttnCache(model, max_batch_size=batch, max_cache_len=64)
        out = greedy(model, ids, mask, past_key_values=cache)
        assert torch.equal(out, ref), f"{family}/{backend} batch {batch}: patched greedy tokens differ"
        assert cache.split_totals["prefill"] == batch and cache.split_totals["decode"] == batch * 31
        # and through generate()'s own cache (patch installs a RocmAttnCache there)
        if batch == 3:
            assert torch.equal(greedy(model, ids, mask), ref)


def test_generate_makes_a_paged_cache_and_dense_path_still_works():
    ref_model = tiny("llama")
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="none", compile=False)
    ids, mask = prompts(2)
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append(type(kw.get("past_key_values")).__name__), with_kwargs=True)
    out = greedy(model, ids, mask, n=4)
    hook.remove()
    assert set(seen) == {"RocmAttnCache"}
    assert torch.equal(out, greedy(ref_model, ids, mask, n=4))
    # a DynamicCache (or no cache) takes the dense flash_attention path
    assert torch.equal(greedy(model, ids, mask, n=8, past_key_values=DynamicCache()), greedy(ref_model, ids, mask, n=8))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask, use_cache=False).logits[mask.bool()],
                                   ref_model(ids, attention_mask=mask, use_cache=False).logits[mask.bool()],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["TRITON_ATTN", "ROCM_AITER_FA"])
def test_second_turn_reuses_cache_like_a_fresh_run(backend):
    if not registered(backend):
        pytest.skip(f"{backend} not registered in this build")
    model = rocm_attn.patch(tiny("llama"), quantization="none", attention_backend=backend, compile=False)
    ids, mask = prompts(1)
    cache = RocmAttnCache(model, max_cache_len=128)
    turn1 = greedy(model, ids, mask, n=8, past_key_values=cache)
    follow_up = torch.randint(1, 128, (1, 7), generator=torch.Generator().manual_seed(2))
    prompt2 = torch.cat([turn1, follow_up], dim=1)
    before = dict(cache.split_totals)
    turn2 = greedy(model, prompt2, torch.ones_like(prompt2), n=8, past_key_values=cache)
    assert cache.split_totals["extend"] == before["extend"] + 1  # the second turn took the extend path
    fresh = greedy(model, prompt2, torch.ones_like(prompt2), n=8,
                   past_key_values=RocmAttnCache(model, max_cache_len=128))
    assert torch.equal(turn2, fresh)


def test_ptpc_fp8_logits_within_budget():
    ref_model = tiny("llama")
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="ptpc_fp8", compile=False)
    report = model.rocm_attn_report
    assert report.linears_replaced == 14 and report.linears_skipped == ["lm_head"]
    assert report.attention_layers == 2
    assert isinstance(model.model.layers[0].mlp.up_proj, rocm_attn.FP8Linear)
    assert model.model.layers[0].mlp.up_proj.wq.element_size() == 1
    ids, mask = prompts(3)
    with torch.no_grad():
        ref = ref_model(ids, attention_mask=mask).logits[mask.bool()]
        out = model(ids, attention_mask=mask).logits[mask.bool()]
    assert rel_err(out, ref) < 5e-2
    per_tensor = rocm_attn.patch(copy.deepcopy(ref_model), quantization="fp8_per_tensor", compile=False)
    with torch.no_grad():
        assert rel_err(per_tensor(ids, attention_mask=mask).logits[mask.bool()], ref) < 1e-1


def test_patch_is_idempotent_and_reports():
    model = rocm_attn.patch(tiny("llama"), compile=False)
    modules = dict(model.named_modules())
    again = rocm_attn.patch(model, compile=False)
    assert again is model and dict(model.named_modules()).keys() == modules.keys()
    assert "linears replaced    14" in str(model.rocm_attn_report)
    with pytest.raises(ValueError, match="already patched"):
        rocm_attn.patch(model, quantization="none", compile=False)


def test_report_says_decode_runs_eagerly_on_cpu():
    """compile=True sets HF's compile_config, but generate() compiles decode on GPUs only: on a CPU model the
    report says so rather than promising a compiled decode; compile=False adds no such note."""
    report = str(rocm_attn.patch(tiny("llama"), compile=True).rocm_attn_report)
    assert "compiled decode     backend=rocm_attn (CUDA graphs) once on a GPU; eager on cpu" in report
    assert "on cpu it runs eagerly" in report
    assert "runs eagerly" not in str(rocm_attn.patch(tiny("llama"), compile=False).rocm_attn_report)


def test_clear_errors():
    with pytest.raises(TypeError, match="Hugging Face"):
        rocm_attn.patch(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="quantization"):
        rocm_attn.patch(tiny("llama"), quantization="int4")
    model = rocm_attn.patch(tiny("llama"), quantization="none", compile=False)
    ids, mask = prompts(1)
    with pytest.raises(NotImplementedError, match="beam"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=2, do_sample=False,
                       past_key_values=RocmAttnCache(model, max_batch_size=2, max_cache_len=64))


@pytest.mark.slow
@pytest.mark.full_inductor  # the generated C++ kernels too (tests/conftest.py)
def test_compiled_decode_with_rocm_attn_backend():
    ref_model = tiny("llama")
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="none", compile=True)
    cc = model.generation_config.compile_config
    assert cc.backend == "rocm_attn"
    cc._compile_all_devices = True  # HF compiles decode on GPUs only; force it on CPU for the test
    ids, mask = prompts(2)
    torch._dynamo.reset()
    out = greedy(model, ids, mask, n=6)
    assert torch.equal(out, greedy(ref_model, ids, mask, n=6))
    assert hasattr(model, "_compiled_call")  # generate() did compile decode


@pytest.mark.parametrize("family, backend", [("llama", "TRITON_ATTN"), ("gemma", "ROCM_AITER_FA"),
                                             ("mistral", "TRITON_ATTN"), ("gemma2", "ROCM_AITER_FA")])
def test_device_decode_equals_host_path(family, backend):
    """Decode steps on the RocmAttnCache run on device tensors only (hf_cache.decode_step); the host path
    (device_decode=False: per-step metadata from the allocator) gives the same tokens, padded batch, and both
    equal the unpatched model (sliding window and soft-capping included)."""
    if not registered(backend):
        pytest.skip(f"{backend} not registered in this build")
    ref_model = tiny(family)
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="none", attention_backend=backend,
                            compile=False)
    ids, mask = prompts(3)
    outs = {}
    for device_decode in (True, False):
        cache = RocmAttnCache(model, max_batch_size=3, max_cache_len=64, device_decode=device_decode)
        outs[device_decode] = greedy(model, ids, mask, n=12, past_key_values=cache)
        assert cache.split_totals == {"decode": 3 * 11, "extend": 0, "prefill": 3}
        assert (cache.decode_block_table is not None) == device_decode
    assert torch.equal(outs[True], outs[False])
    assert torch.equal(outs[True], greedy(ref_model, ids, mask, n=12))


def test_device_decode_keeps_host_state_for_the_next_turn():
    """After device decode steps (which only the device counts) a second turn's host step catches up:
    the allocator holds each row's real length, and every row keeps its reserved blocks."""
    model = rocm_attn.patch(tiny("llama"), quantization="none", compile=False)
    ids, mask = prompts(2)
    cache = RocmAttnCache(model, max_batch_size=2, max_cache_len=64)
    greedy(model, ids, mask, n=6, past_key_values=cache)  # prefill 10 positions + 5 decode steps
    real = mask.sum(1).tolist()
    assert [cache.allocator.seq_len(b) for b in range(2)] == real  # not yet told of the device steps
    assert cache.decode_pad.tolist() == [10 - r for r in real]
    next_ids = torch.randint(1, 128, (2, 2))
    with torch.no_grad():
        model(next_ids, attention_mask=torch.ones(2, 17, dtype=torch.long), past_key_values=cache)
    assert [cache.allocator.seq_len(b) for b in range(2)] == [r + 5 + 2 for r in real]
    per_row = cache.decode_block_table.shape[1]
    assert all(len(cache.allocator.blocks(b)) == per_row for b in range(2))


def test_generate_reuses_its_cache_and_compiles_decode_once():
    """generate() keeps its RocmAttnCache on the model and resets it for the next call that fits (as HF
    does with its static cache): the compiled decode step does not recompile (nor re-record a CUDA
    graph)."""
    from torch._dynamo.utils import counters

    ref_model = tiny("llama")
    model = rocm_attn.patch(copy.deepcopy(ref_model), quantization="none", compile=True)
    cc = model.generation_config.compile_config
    assert cc.options["mode"] == "reduce-overhead"  # CUDA graphs on a GPU
    cc._compile_all_devices = True  # HF compiles decode on GPUs only; force it on CPU for the test
    ids, mask = prompts(2)
    torch._dynamo.reset()
    counters.clear()
    first = greedy(model, ids, mask, n=6)
    cache = model._rocm_attn_generate_cache
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    second = greedy(model, ids, mask, n=4)  # a shorter call fits the same cache
    assert model._rocm_attn_generate_cache is cache
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile
    third = greedy(model, ids, mask, n=12)  # longer, but inside the rounded length (256)
    assert model._rocm_attn_generate_cache is cache and cache.pool_max_len == 256
    assert counters["stats"]["unique_graphs"] == graphs
    ref = greedy(ref_model, ids, mask, n=12)
    assert torch.equal(first, ref[:, : ids.shape[1] + 6]) and torch.equal(second, ref[:, : ids.shape[1] + 4])
    assert torch.equal(third, ref)
    greedy(model, ids[:1], mask[:1], n=4)  # another batch size: a new cache
    assert model._rocm_attn_generate_cache is not cache


def test_rounded_cache_length():
    from rocm_attn.patch import rounded_cache_length

    assert [rounded_cache_length(n) for n in (1, 6, 256, 257, 300, 512, 513, 1025, 1280, 1281, 2047, 5000)] == [
        256, 256, 256, 320, 320, 512, 640, 1280, 1280, 1536, 2048, 5120]
    for n in range(1, 20000, 7):  # never short, never more than 25% over (past the minimum)
        r = rounded_cache_length(n)
        assert r >= n and (n <= 256 or r <= 1.25 * n)


def test_generate_cache_sizes_exactly_when_asked():
    """round_generate_cache=False: the cache generate() makes holds exactly what HF asks for (max_length - 1:
    the last token is never fed back); a generation_config.max_cache_len asks for more."""
    model = rocm_attn.patch(tiny("llama"), quantization="none", round_generate_cache=False)
    ids, mask = prompts(2)
    greedy(model, ids, mask, n=3)
    assert model._rocm_attn_generate_cache.pool_max_len == ids.shape[1] + 3 - 1
    model.generation_config.max_cache_len = 40
    greedy(model, ids, mask, n=5)
    assert model._rocm_attn_generate_cache.pool_max_len == 40


def test_a_full_cache_is_refused_not_overrun():
    """generate() refuses a RocmAttnCache shorter than its max_length; a hand-driven decode loop past
    max_cache_len gets CacheFullError before anything is written (the device path reserves a fixed block
    table per row, so it must never index past it)."""
    from rocm_attn.kernels.kv_cache import CacheFullError

    model = rocm_attn.patch(tiny("llama"), quantization="none", compile=False)
    ids, mask = prompts(2)
    with pytest.raises(ValueError, match="max_cache_len=16"):
        short = RocmAttnCache(model, max_batch_size=2, max_cache_len=16)
        greedy(model, ids, mask, n=8, past_key_values=short)
    cache = RocmAttnCache(model, max_batch_size=2, max_cache_len=16)  # one block of 16 per row
    with torch.no_grad():
        # 10 positions; the rows hold 10 and 7 tokens
        out = model(ids, attention_mask=mask, past_key_values=cache)
        step = out.logits[:, -1:].argmax(-1)
        for i in range(6):  # row 0 reaches 16 tokens
            full = torch.ones(2, 11 + i, dtype=torch.long)
            step = model(step, attention_mask=full, past_key_values=cache).logits[:, -1:].argmax(-1)
        k_before = cache.kv[0].k_cache.clone()
        with pytest.raises(CacheFullError, match="max_cache_len"):
            model(step, attention_mask=torch.ones(2, 17, dtype=torch.long), past_key_values=cache)
    assert torch.equal(cache.kv[0].k_cache, k_before)
