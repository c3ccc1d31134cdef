"""rocm_attn.attention with the unified backends, and the unified_attention op, vs a dense float64
reference (rocm_attn.testing.reference_attention) on random mixed paged batches."""

import random

import pytest
import torch

import rocm_attn
from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.attention import KNOWN_BACKENDS, _BACKENDS, register_attention_backend
from rocm_attn.kernels.attention_metadata import build_metadata
from rocm_attn.testing import boundary_specs, make_mixed_batch, random_specs, reference_attention, rel_err

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}

# (id, kinds or "boundary", group (Hq/Hkv), head_dim, block_size, dtype, layout, sliding_window, softcap)
CASES = [
    ("mixed-gqa1", ["decode", "extend", "prefill", "decode", "extend"], 1, 64, 16, torch.float32, "standard", None, None),
    ("boundary-gqa4-d128", "boundary", 4, 128, 32, torch.float16, "shuffled", None, None),
    ("decode-only-gqa8", ["decode"] * 6, 8, 64, 16, torch.float32, "shuffled", None, None),
    ("prefill-only-gqa4", ["prefill"] * 3, 4, 64, 32, torch.float16, "standard", None, None),
    ("extend-only-gqa1-d128", ["extend"] * 3, 1, 128, 16, torch.float32, "shuffled", None, None),
    ("mixed-window", ["extend", "decode", "prefill", "decode"], 4, 64, 16, torch.float32, "standard", 7, None),
    ("mixed-softcap", ["prefill", "decode", "extend"], 8, 64, 16, torch.float16, "shuffled", None, 5.0),
    ("mixed-window-softcap-bs64", ["decode", "extend", "prefill"], 2, 64, 64, torch.float32, "standard", 20, 3.0),
    ("head-dim-80", ["extend", "decode"], 4, 80, 16, torch.float32, "shuffled", None, None),
    ("gqa3", ["prefill", "decode", "extend"], 3, 64, 16, torch.float16, "standard", None, None),
    ("boundary-gqa1-bs16", "boundary", 1, 64, 16, torch.float32, "standard", None, None),
]


def case_batch(case, seed=0, device="cpu"):
    _, kinds, group, head_dim, bs, dtype, layout, window, softcap = case
    rng = random.Random(seed)
    if kinds == "boundary":
        specs = boundary_specs(bs)
        rng.shuffle(specs)
    else:
        specs = random_specs(kinds, bs, rng)
    return make_mixed_batch(specs, 2, group, head_dim, bs, dtype, layout, device, seed=seed), window, softcap


def run_attention(b, backend="TRITON_ATTN", window=None, softcap=None, with_metadata=False):
    return rocm_attn.attention(b.q, b.k, b.v, b.kv_cache, b.query_start_loc, b.seq_lens, b.block_table,
                               b.slot_mapping, scale=b.scale, backend=backend, sliding_window=window,
                               softcap=softcap, metadata=b.metadata if with_metadata else None)


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_attention_matches_reference(case, provider):
    b, window, softcap = case_batch(case)
    with use_kernels(provider):
        out = run_attention(b, window=window, softcap=softcap, with_metadata=provider == "triton")
    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, window, softcap)
    assert out.shape == b.q.shape and out.dtype == b.q.dtype
    assert rel_err(out, ref) < TOL[b.q.dtype], rel_err(out, ref)
    # the new tokens are now in the cache
    k_std, v_std = b.kv_cache.dense()
    slots = b.slot_mapping
    bs = b.kv_cache.block_size
    assert torch.equal(k_std[slots // bs, slots % bs], b.k) and torch.equal(v_std[slots // bs, slots % bs], b.v)


def test_bf16_torch_reference():
    b = make_mixed_batch(boundary_specs(16), 2, 4, 64, 16, torch.bfloat16, "shuffled")
    out = run_attention(b)
    assert rel_err(out, reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_long_prefix_and_chunk(layout):
    """Several q-blocks and KV tiles per sequence: unmasked tiles, the causal diagonal, the causal skip."""
    specs = [(150, 40), (0, 100), (64, 1)]
    b = make_mixed_batch(specs, 2, 4, 32, 16, torch.float32, layout, seed=3)
    with use_kernels("triton"):
        out = run_attention(b)
        out_w = rocm_attn.attention(b.q, b.k, b.v, b.kv_cache, b.query_start_loc, b.seq_lens, b.block_table,
                                    b.slot_mapping, scale=b.scale, sliding_window=45)
    assert rel_err(out, reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale)) < 2e-5
    assert rel_err(out_w, reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, 45)) < 2e-5


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("split_kv", [True, None])
def test_split_kv_decode(layout, split_kv):
    """Decode batch with long contexts: the split-KV (segments + reduce) path."""
    from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch

    specs = [(300, 1), (129, 1), (0, 1), (191, 1)]
    b = make_mixed_batch(specs, 1, 4, 32, 16, torch.float32, layout, seed=5)
    rocm_attn.reshape_and_cache(b.k, b.v, b.kv_cache, b.slot_mapping)
    md = b.metadata
    for window, softcap in [(None, None), (100, 2.0)]:
        out = unified_attention_launch(b.q, b.kv_cache.k_cache, b.kv_cache.v_cache, md.query_start_loc,
                                       md.seq_lens, md.block_table, b.scale, layout, window or 0, softcap or 0.0,
                                       md.max_query_len, md.max_seq_len, split_kv=split_kv)
        ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, window, softcap)
        assert rel_err(out, ref) < 2e-5


@pytest.mark.parametrize("provider", ["torch", "triton"])
def test_aiter_unified_backend_falls_back(provider):
    b, window, softcap = case_batch(CASES[6])
    with use_kernels(provider):
        out = run_attention(b, backend="ROCM_AITER_UNIFIED_ATTN", window=window, softcap=softcap)
    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, window, softcap)
    assert rel_err(out, ref) < TOL[b.q.dtype]
    info = rocm_attn.available_attention_backends()
    assert "not usable" in info["ROCM_AITER_UNIFIED_ATTN"]["implementation"]
    assert set(KNOWN_BACKENDS) <= set(info)


def test_order_independence():
    """The same sequences in another order give the same per-sequence outputs."""
    specs = [(20, 1), (0, 9), (33, 4), (16, 1)]
    b1 = make_mixed_batch(specs, 2, 4, 32, 16, torch.float32, "standard", seed=7)
    out1 = run_attention(b1)
    ref = reference_attention(b1.q, b1.k_full, b1.v_full, b1.query_lens, b1.scale)
    assert rel_err(out1, ref) < 2e-5
    assert out1.abs().sum(-1).gt(0).all()  # every token got an output


def test_empty_batch():
    b = make_mixed_batch([], 2, 2, 16, 16, torch.float32, "standard")
    out = run_attention(b)
    assert out.shape == (0, 4, 16)


def test_opcheck():
    b = make_mixed_batch([(5, 1), (0, 3)], 2, 2, 16, 16, torch.float32, "standard")
    rocm_attn.reshape_and_cache(b.k, b.v, b.kv_cache, b.slot_mapping)
    args = (b.q, b.kv_cache.k_cache, b.kv_cache.v_cache, b.query_start_loc, b.seq_lens, b.block_table, b.scale,
            "standard", 0, 0.0, 3, 6)
    torch.library.opcheck(torch.ops.rocm_attn.unified_attention.default, args)


# ---------------------------------------------------------------- errors

def test_backend_errors(monkeypatch):
    b = make_mixed_batch([(3, 2)], 2, 2, 16, 16, torch.float32, "shuffled")
    with pytest.raises(ValueError, match="unknown backend 'FLASH'.*available: .*TRITON_ATTN"):
        run_attention(b, backend="FLASH")
    monkeypatch.delitem(_BACKENDS, "ROCM_ATTN", raising=False)
    with pytest.raises(NotImplementedError, match="'ROCM_ATTN' is not registered.*TRITON_ATTN"):
        run_attention(b, backend="ROCM_ATTN")
    register_attention_backend("TEST_STANDARD_ONLY", lambda *a: None, layouts=("standard",))
    try:
        with pytest.raises(ValueError, match="takes the standard KV layout, not 'shuffled'"):
            run_attention(b, backend="TEST_STANDARD_ONLY")
    finally:
        del _BACKENDS["TEST_STANDARD_ONLY"]


def _call(b, **over):
    args = dict(q=b.q, k=b.k, v=b.v, kv_cache=b.kv_cache, query_start_loc=b.query_start_loc, seq_lens=b.seq_lens,
                block_table=b.block_table, slot_mapping=b.slot_mapping)
    kw = dict(scale=b.scale)
    for key, val in over.items():
        (args if key in args else kw)[key] = val
    return rocm_attn.attention(*args.values(), **kw)


def test_input_errors():
    b = make_mixed_batch([(20, 1), (0, 4)], 2, 2, 16, 16, torch.float32, "standard")
    with pytest.raises(TypeError, match="share one dtype"):
        _call(b, q=b.q.half())
    with pytest.raises(ValueError, match="multiple of the number of KV heads"):
        _call(b, q=torch.randn(5, 3, 16))
    with pytest.raises(ValueError, match=r"k and v must be \[T, 2, 16\]"):
        _call(b, k=torch.randn(5, 4, 16))
    with pytest.raises(ValueError, match="points outside the cache"):
        _call(b, block_table=b.block_table + 100)
    with pytest.raises(ValueError, match="needs 2 blocks but block_table has 1"):
        _call(b, block_table=b.block_table[:, :1])
    with pytest.raises(ValueError, match="shorter than its 4 new tokens"):
        _call(b, seq_lens=torch.tensor([21, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="query_start_loc must rise from 0 to T = 5"):
        _call(b, query_start_loc=torch.tensor([0, 1, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="query_start_loc needs 3"):
        _call(b, query_start_loc=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="scale"):
        _call(b, scale=0.0)
    with pytest.raises(ValueError, match="sliding_window"):
        _call(b, sliding_window=0)
    with pytest.raises(ValueError, match="softcap"):
        _call(b, softcap=-1.0)
    with pytest.raises(TypeError, match="KVCache"):
        _call(b, kv_cache=b.kv_cache.k_cache)
    with pytest.raises(ValueError, match="past the cache"):
        _call(b, slot_mapping=b.slot_mapping + 10_000)
    with pytest.raises(TypeError, match="int32"):
        _call(b, seq_lens=b.seq_lens.float())
    # metadata for another block size would put k/v in the wrong slots
    md8 = build_metadata([20, 0], [1, 4], [[0, 1, 2], [3]], 8)
    with pytest.raises(ValueError, match="blocks of 8 tokens but the cache's blocks hold 16"):
        rocm_attn.attention(b.q, b.k, b.v, b.kv_cache, md8.query_start_loc, md8.seq_lens, md8.block_table,
                            md8.slot_mapping, scale=b.scale, metadata=md8)


class _OpNames(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the rocm_attn ops a call runs."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "rocm_attn":
            self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kinds, fresh", [(["prefill"] * 3, True), (["prefill", "decode", "extend"], False)])
def test_prefill_only_batch_takes_the_varlen_flash_kernel(kinds, fresh):
    """TRITON_ATTN on a batch of fresh prompts reads this call's k/v with flash_attn_varlen (no pages);
    any batch with cached context stays on the unified kernel. Both match the reference."""
    b = make_mixed_batch(random_specs(kinds, 16, random.Random(3)), 2, 4, 64, 16, torch.float32, "shuffled")
    rec = _OpNames()
    with use_kernels("torch"), rec:
        out = run_attention(b, window=5 if fresh else None)
    ran = set(rec.names)
    assert ("rocm_attn::flash_attn_varlen" in ran) == fresh
    assert ("rocm_attn::unified_attention" in ran) == (not fresh)
    ref = reference_attention(b.q, b.k_full, b.v_full, b.query_lens, b.scale, 5 if fresh else None, None)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_decode_segments_follow_the_programs_per_sm():
    """pick_config's split-KV rule for decode (a CPU device counts as 4 SMs): one segment once the batch
    gives ~3 programs (sequence x KV head) per SM; fewer programs split each sequence towards ~4 per SM,
    never into segments of fewer than two tiles."""
    from rocm_attn.kernels.triton_kernels.unified_attention import pick_config

    cpu = torch.device("cpu")

    def segments(num_seqs, num_kv_heads, max_seq_len, split_kv=None):
        return pick_config(num_seqs, num_kv_heads, 4, 128, 1, max_seq_len, cpu, split_kv)["NUM_SEGMENTS"]

    assert segments(6, 2, 4096) == 1  # 12 programs = 3 per SM
    assert segments(3, 2, 4096) == 4  # 6 programs: 16 / 6 -> 3 -> next power of two
    assert segments(1, 1, 4096) == 16  # 1 program: 16 wanted, the cap
    assert segments(1, 1, 64) == 1  # two 32-key tiles: no room to split
    assert segments(6, 2, 4096, split_kv=True) == 2  # forced split
    assert segments(1, 1, 4096, split_kv=False) == 1
    assert pick_config(1, 1, 4, 128, 16, 4096, cpu)["NUM_SEGMENTS"] == 1  # not decode: never split
