"""The RocmAttnCache over several generate() calls (tiny fp32 Llama, CPU, quantization "none"): a reset cache
takes a new batch, dtype or step count; a mask that disagrees with what the paged cache attends is refused;
a sliding window that only HF's mask applies keeps HF's cache. The oracle is the unpatched model."""

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PhimoeConfig, PhimoeForCausalLM

import rocm_attn
from rocm_attn.hf_cache import RocmAttnCache, _check_mask_matches

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, pad_token_id=0)
GREEDY = dict(do_sample=False, pad_token_id=0)


def pair():
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    return ref, rocm_attn.patch(copy.deepcopy(ref), quantization="none", compile=False)


def test_reset_cache_has_room_for_a_one_token_prompt():
    """A long call leaves the kept 256-position cache ~7 steps of room; the next call (1-token prompt, 20 new)
    resets it. Its decode steps used to count down the old room and stop with CacheFullError."""
    ref, pat = pair()
    pat.generate(torch.randint(3, 128, (1, 200)), max_new_tokens=50, **GREEDY)
    kept = pat._rocm_attn_generate_cache
    one = torch.tensor([[5]])
    assert torch.equal(pat.generate(one, max_new_tokens=20, **GREEDY), ref.generate(one, max_new_tokens=20, **GREEDY))
    assert pat._rocm_attn_generate_cache is kept


def test_reset_cache_takes_another_batch():
    """The refusal says "call cache.reset() first": after it, a batch of another size runs, and equals HF."""
    ref, pat = pair()
    cache = RocmAttnCache(pat, max_batch_size=2, max_cache_len=64)
    pat.generate(torch.randint(3, 128, (2, 6)), past_key_values=cache, max_new_tokens=3, **GREEDY)
    one = torch.randint(3, 128, (1, 6))
    with pytest.raises(ValueError, match="call cache.reset"):
        pat.generate(one, past_key_values=cache, max_new_tokens=3, **GREEDY)
    cache.reset()
    got = pat.generate(one, past_key_values=cache, max_new_tokens=3, **GREEDY)
    assert torch.equal(got, ref.generate(one, max_new_tokens=3, **GREEDY))


def test_generate_after_model_to_dtype():
    """model.to(bf16) after a generate(): the kept fp32 cache used to be reused and refused the bf16 K/V."""
    ref, pat = pair()
    ids = torch.randint(3, 128, (1, 9))
    pat.generate(ids, max_new_tokens=8, **GREEDY)
    pat.to(torch.bfloat16)
    ref.to(torch.bfloat16)
    got = pat.generate(ids, max_new_tokens=8, **GREEDY)
    assert torch.equal(got, ref.generate(ids, max_new_tokens=8, **GREEDY))
    assert pat._rocm_attn_generate_cache.kv[0].dtype == torch.bfloat16


def test_second_turn_masking_out_cached_tokens_is_refused():
    """Row 0 stops at EOS in turn 1; HF feeds it pads with mask 1, so they are cached. Turn 2 masks them out.
    HF's cache honours that; the paged cache cannot un-cache tokens. It used to attend them silently (other
    tokens than HF); now it refuses, and a DynamicCache gives HF's tokens."""
    ref, pat = pair()
    g = torch.Generator().manual_seed(2)
    ids, mask = torch.zeros(2, 11, dtype=torch.long), torch.zeros(2, 11, dtype=torch.long)
    ids[0, 7:], mask[0, 7:] = torch.randint(3, 128, (4,), generator=g), 1
    ids[1], mask[1] = torch.randint(3, 128, (11,), generator=g), 1
    eos = int(ref.generate(ids, attention_mask=mask, max_new_tokens=10, **GREEDY)[0, 13])  # row 0's 3rd token
    cache = RocmAttnCache(pat, max_batch_size=2, max_cache_len=256)
    out = pat.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=10, eos_token_id=eos,
                       **GREEDY)
    assert (out[0, 14:] == 0).all()  # row 0 finished: pads, cached with mask 1
    turn2 = torch.cat([out, torch.randint(3, 128, (2, 3), generator=g)], 1)
    mask2 = torch.cat([mask, (out[:, 11:] != 0).long(), torch.ones(2, 3, dtype=torch.long)], 1)
    with pytest.raises(ValueError, match="cannot un-cache tokens"):
        pat.generate(turn2, attention_mask=mask2, past_key_values=cache, max_new_tokens=6, eos_token_id=eos,
                     **GREEDY)
    dense = pat.generate(turn2, attention_mask=mask2, past_key_values=DynamicCache(), max_new_tokens=6,
                         eos_token_id=eos, **GREEDY)
    assert torch.equal(dense, ref.generate(turn2, attention_mask=mask2, max_new_tokens=6, eos_token_id=eos,
                                           **GREEDY))


def test_mask_check_counts():
    """_check_mask_matches on hand-made counts: 3 cached tokens, 2 real new ones after a padding slot (left
    padding); visible is what HF's mask shows the step's last token."""
    real = torch.tensor([[False, True, True]])
    no_next = torch.zeros(1, 2, dtype=torch.bool)
    _check_mask_matches(real, torch.tensor([5]), no_next, [3], 0, 0)  # causal: 5 keys
    _check_mask_matches(real, torch.tensor([4]), no_next, [3], 4, 0)  # a window of 4
    _check_mask_matches(real, torch.tensor([7]), no_next, [3], 0, 0)  # more: never-cached padding
    _check_mask_matches(torch.tensor([[True, True, False]]), torch.tensor([0]), no_next, [3], 0, 0)  # right pad
    with pytest.raises(ValueError, match="shows the step's last token 4 keys where the paged cache attends 5"):
        _check_mask_matches(real, torch.tensor([4]), no_next, [3], 0, 0)
    with pytest.raises(ValueError, match="window 4"):  # 5 keys past a window of 4: HF's mask has none
        _check_mask_matches(real, torch.tensor([5]), no_next, [3], 4, 0)
    with pytest.raises(ValueError, match="window 4"):  # fewer than the window
        _check_mask_matches(real, torch.tensor([3]), no_next, [3], 4, 0)
    with pytest.raises(ValueError, match="later position"):
        _check_mask_matches(real, torch.tensor([5]), torch.tensor([[False, True]]), [3], 0, 0)


def phimoe(window: int):
    torch.manual_seed(0)
    cfg = PhimoeConfig(sliding_window=window, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=512,
                       num_local_experts=4, num_experts_per_tok=2, pad_token_id=0)
    return PhimoeForCausalLM(cfg).eval()


def test_window_only_in_the_mask_keeps_hf_cache():
    """PhiMoE applies its window only through HF's mask (its attention gets none): the paged path would attend
    past it. patch() keeps HF's cache (report note) and generate() equals unpatched past the window. A window
    no sequence can outgrow (PhiMoE's checkpoints: = max_position_embeddings) keeps the paged cache."""
    ref = phimoe(8)
    pat = rocm_attn.patch(copy.deepcopy(ref), quantization="none", compile=False)
    assert pat.rocm_attn_report.kv_layout is None
    assert "applied only in HF's mask" in str(pat.rocm_attn_report)
    with pytest.raises(NotImplementedError, match="applied only in HF's mask"):
        RocmAttnCache(pat, max_batch_size=1, max_cache_len=64)
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pat.generate(ids, max_new_tokens=10, **GREEDY), ref.generate(ids, max_new_tokens=10, **GREEDY))
    assert rocm_attn.patch(phimoe(512), quantization="none", compile=False).rocm_attn_report.kv_layout is not None
