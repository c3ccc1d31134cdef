"""MLA backends (TRITON_MLA / ROCM_AITER_MLA) on a tiny HF DeepseekV3 attention layer vs HF eager.

An engine loop: several sequences advance in steps (prefill chunks, extends, decodes) mixed in random
order in each batch; every step goes through the paged latent cache (absorbed decode, non-absorbed
prefill/extend with the context gathered in rounds). The outputs of each sequence must equal HF's
eager attention over the whole sequence (causal mask), computed in float64.
"""

import random

import pytest
import torch

import rocm_attn  # noqa: F401
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.attention_metadata import build_metadata_from_allocator
from rocm_attn.kernels.mla import MLACache
from rocm_attn.kernels.mla_attention import MLAWeights, mla_attention, mla_weights_for
from rocm_attn.patterns.attention_mla import is_mla_module, mla_inputs, mla_module_forward
from rocm_attn.testing import rel_err

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf  # noqa: E402


def tiny_layer(q_lora_rank=24, rope_interleave=True, dtype=torch.float64):
    cfg = DeepseekV3Config(
        vocab_size=64, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=q_lora_rank,
        qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=24, max_position_embeddings=256,
        rope_interleave=rope_interleave, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = hf.DeepseekV3Attention(cfg, 0).to(dtype).eval()
    for p in layer.parameters():  # bigger than the init so that attention is not near-uniform
        p.data.normal_(0, 0.3)
    rotary = hf.DeepseekV3RotaryEmbedding(cfg)
    return layer, rotary


def rope(rotary, positions, dtype):
    cos, sin = rotary(torch.zeros(1, dtype=dtype), positions[None])
    return cos[0], sin[0]


def hf_reference(layer, rotary, hidden):
    """HF eager on one whole sequence [S, hidden] -> [S, hidden]."""
    S = hidden.shape[0]
    cos, sin = rotary(hidden, torch.arange(S)[None])
    mask = torch.full((S, S), float("-inf"), dtype=hidden.dtype).triu(1)[None, None]
    with torch.no_grad():
        return layer(hidden[None], (cos, sin), mask)[0][0]


def run_engine(layer, rotary, hiddens, schedule, cache_dtype, backend, workspace, seed=0):
    """schedule: list of steps, each {seq: n_new}; returns per-sequence outputs [S, hidden]."""
    rng = random.Random(seed)
    cache = MLACache(64, 8, layer.kv_lora_rank, layer.qk_rope_head_dim, cache_dtype)
    done = {s: 0 for s in hiddens}
    outs = {s: [] for s in hiddens}
    for step in schedule:
        seqs = list(step)
        rng.shuffle(seqs)  # sequences of every kind in any order
        md = build_metadata_from_allocator(cache.allocator, seqs, [step[s] for s in seqs])
        pos = torch.cat([torch.arange(done[s], done[s] + step[s]) for s in seqs])
        h = torch.cat([hiddens[s][done[s]:done[s] + step[s]] for s in seqs])
        with torch.no_grad():
            out = mla_module_forward(layer, h.to(cache_dtype), rope(rotary, pos, cache_dtype), cache,
                                     md.query_start_loc, md.seq_lens, md.block_table, md.slot_mapping,
                                     backend=backend, metadata=md, workspace=workspace)
        start = 0
        for s in seqs:
            outs[s].append(out[start:start + step[s]])
            start += step[s]
            done[s] += step[s]
    return {s: torch.cat(o) for s, o in outs.items()}


# seq "a": prefill 9, extend 5, decodes; "b": decode from empty, then extend; "c": long prefill then decodes;
# "d" joins late with a prefill; "e": a 1-token prefill (a decode with empty context)
SCHEDULE = [
    {"a": 9, "b": 1, "c": 20},
    {"a": 5, "b": 1, "c": 1, "e": 1},
    {"a": 1, "b": 6, "c": 1, "d": 7, "e": 3},
    {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1},
    {"a": 4, "c": 1, "d": 2},
]


def lengths(schedule):
    total = {}
    for step in schedule:
        for s, n in step.items():
            total[s] = total.get(s, 0) + n
    return total


@pytest.mark.parametrize("backend", ["TRITON_MLA", "ROCM_AITER_MLA"])
@pytest.mark.parametrize("workspace", [4, 32768])  # 4: context gathered in many rounds
def test_engine_loop_matches_hf_eager(backend, workspace):
    layer, rotary = tiny_layer()
    gen = torch.Generator().manual_seed(1)
    hiddens = {s: torch.randn(n, 64, generator=gen, dtype=torch.float64) for s, n in lengths(SCHEDULE).items()}
    ours = run_engine(layer.float(), rotary, {s: h.float() for s, h in hiddens.items()}, SCHEDULE, torch.float32,
                      backend, workspace)
    layer = layer.double()
    for s, h in hiddens.items():
        ref = hf_reference(layer, rotary, h)
        assert rel_err(ours[s], ref) < 2e-5, s


def test_no_q_lora_and_plain_rope():
    layer, rotary = tiny_layer(q_lora_rank=None, rope_interleave=False, dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    schedule = [{"a": 6, "b": 3}, {"a": 1, "b": 4}, {"a": 1, "b": 1}]
    hiddens = {s: torch.randn(n, 64, generator=gen) for s, n in lengths(schedule).items()}
    ours = run_engine(layer, rotary, hiddens, schedule, torch.float32, "TRITON_MLA", 32768)
    for s, h in hiddens.items():
        assert rel_err(ours[s], hf_reference(layer, rotary, h)) < 2e-5, s


def test_triton_kernels_engine_loop():
    """The same loop with every op on its Triton provider (interpreter, fp32, small)."""
    layer, rotary = tiny_layer(dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    schedule = [{"a": 5, "b": 1}, {"a": 1, "b": 3}, {"a": 1, "b": 1}]
    hiddens = {s: torch.randn(n, 64, generator=gen) for s, n in lengths(schedule).items()}
    with use_kernels("triton"):
        ours = run_engine(layer, rotary, hiddens, schedule, torch.float32, "TRITON_MLA", 4)
    for s, h in hiddens.items():
        assert rel_err(ours[s], hf_reference(layer, rotary, h)) < 1e-4, s


def test_bf16_within_budget():
    layer, rotary = tiny_layer(dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    hiddens = {s: torch.randn(n, 64, generator=gen, dtype=torch.float64) for s, n in lengths(SCHEDULE).items()}
    ours = run_engine(layer.to(torch.bfloat16), rotary, {s: h.bfloat16() for s, h in hiddens.items()}, SCHEDULE,
                      torch.bfloat16, "TRITON_MLA", 8)
    layer = layer.double()
    for s, h in hiddens.items():
        assert rel_err(ours[s], hf_reference(layer, rotary, h)) < 3e-2, s


@torch.no_grad()
def test_absorbed_equals_non_absorbed_decode():
    """A decode step (absorbed) and the same token run as an extend (non-absorbed) agree."""
    layer, rotary = tiny_layer(dtype=torch.float32)
    w = mla_weights_for(layer)
    assert mla_weights_for(layer) is w  # prepared once
    h = torch.randn(8, 64)
    cos, sin = rope(rotary, torch.arange(8), torch.float32)
    q, kv_c, k_pe = mla_inputs(layer, h, (cos, sin))
    outs = []
    for split in (7, 6):  # decode (7 cached + 1 new) vs extend (6 cached + 2 new, compare the last token)
        cache = MLACache(4, 4, 32, 16, torch.float32)
        md = build_metadata_from_allocator(cache.allocator, ["s"], [split])
        mla_attention(q[:split], kv_c[:split], k_pe[:split], cache, w, md.query_start_loc, md.seq_lens,
                      md.block_table, md.slot_mapping, scale=layer.scaling, metadata=md)
        md = build_metadata_from_allocator(cache.allocator, ["s"], [8 - split])
        assert md.num_decodes == (1 if split == 7 else 0)
        outs.append(mla_attention(q[split:], kv_c[split:], k_pe[split:], cache, w, md.query_start_loc,
                                  md.seq_lens, md.block_table, md.slot_mapping, scale=layer.scaling,
                                  metadata=md)[-1])
    assert rel_err(outs[0], outs[1]) < 1e-5


def test_is_mla_module_and_errors():
    layer, _ = tiny_layer(dtype=torch.float32)
    assert is_mla_module(layer) and not is_mla_module(torch.nn.Linear(2, 2))
    w = mla_weights_for(layer)
    cache = MLACache(4, 4, 32, 16, torch.float32)
    md = build_metadata_from_allocator(cache.allocator, ["s"], [3])
    args = (torch.randn(3, 4, 48), torch.randn(3, 32), torch.randn(3, 16), cache, w, md.query_start_loc,
            md.seq_lens, md.block_table, md.slot_mapping)
    with pytest.raises(ValueError, match="unknown MLA backend"):
        mla_attention(*args, scale=0.1, backend="FLASHMLA")
    with pytest.raises(ValueError, match=r"q must be \[T, 4, 48\]"):
        mla_attention(torch.randn(3, 4, 40), *args[1:], scale=0.1)
    with pytest.raises(TypeError, match="share a dtype"):
        mla_attention(args[0].half(), *args[1:], scale=0.1)
    with pytest.raises(ValueError, match="rows"):
        MLAWeights.from_kv_b_proj(torch.randn(10, 32), 4, 32, 24)


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_mixed_batches_vs_dense_reference(provider, seed):
    """Random decode/extend/prefill mixtures in random order, contexts on and just past block boundaries."""
    from rocm_attn.testing import boundary_specs, make_mla_batch, random_specs, reference_mla

    rng = random.Random(seed)
    kinds = [rng.choice(["decode", "extend", "prefill"]) for _ in range(5)]
    specs = random_specs(kinds, 8, rng, max_context=40, max_query=9) + (boundary_specs(8)[:4] if seed else [])
    rng.shuffle(specs)
    b = make_mla_batch(specs, num_heads=3, kv_lora_rank=32, rope_dim=16, nope_dim=24, v_dim=16, block_size=8,
                       dtype=torch.float32, seed=seed)
    md = b.metadata
    with use_kernels(provider):
        out = mla_attention(b.q, b.kv_c, b.k_pe, b.mla_cache, b.weights, md.query_start_loc, md.seq_lens,
                            md.block_table, md.slot_mapping, scale=b.scale, workspace=20)
    assert rel_err(out, reference_mla(b)) < 1e-5
