"""ROCM_AITER_FA and ROCM_ATTN through rocm_attn.attention on random mixed batches vs the dense float64
reference of rocm_attn.testing (written independently of the kernels)."""

import contextlib
import random

import pytest
import torch

from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.attention import attention
from rocm_attn.kernels.split_attention import context_rounds, extend_forward, extend_workspace
from rocm_attn.testing import boundary_specs, make_mixed_batch, random_specs, reference_attention, rel_err

BACKENDS = [("ROCM_AITER_FA", "shuffled"), ("ROCM_ATTN", "standard")]
MIXES = {
    "decode_only": ["decode"] * 5,
    "prefill_only": ["prefill"] * 3,
    "extend_only": ["extend"] * 4,
    "mixed": ["decode", "extend", "prefill", "decode", "extend", "decode"],
}


def run(mb, backend, provider="torch", window=None, softcap=None, workspace=None):
    ctx = extend_workspace(workspace) if workspace else contextlib.nullcontext()
    with use_kernels(provider), ctx:
        out = attention(mb.q, mb.k, mb.v, mb.kv_cache, mb.query_start_loc, mb.seq_lens, mb.block_table,
                        mb.slot_mapping, scale=mb.scale, backend=backend, sliding_window=window, softcap=softcap)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, window, softcap)
    return out, ref


@pytest.mark.parametrize("backend,layout", BACKENDS)
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("group,d,bs", [(1, 64, 16), (4, 128, 32), (8, 64, 16)])
def test_random_mixed_batches(backend, layout, mix, group, d, bs):
    rng = random.Random(hash((mix, group, d)) % 1000)
    kinds = MIXES[mix][:]
    rng.shuffle(kinds)  # random order: outputs must come back in input order
    mb = make_mixed_batch(random_specs(kinds, bs, rng), 2, group, d, bs, torch.float32, layout, seed=rng.randint(0, 99))
    out, ref = run(mb, backend, workspace=48)
    assert out.shape == mb.q.shape and rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend,layout", BACKENDS)
def test_block_boundaries(backend, layout):
    mb = make_mixed_batch(boundary_specs(16), 2, 4, 64, 16, torch.float32, layout, seed=5)
    out, ref = run(mb, backend)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend,layout", BACKENDS)
@pytest.mark.parametrize("workspace", [7, 16, 50])
def test_contexts_longer_than_the_workspace(backend, layout, workspace):
    # many extends sharing the workspace, one context many times the workspace, decodes and prefills around
    specs = [(75, 5), (0, 9), (33, 12), (1, 1), (16, 3), (120, 2), (40, 1)]
    mb = make_mixed_batch(specs, 2, 4, 32, 16, torch.float32, layout, seed=workspace)
    out, ref = run(mb, backend, workspace=workspace)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend,layout", BACKENDS)
@pytest.mark.parametrize("window,softcap", [(5, None), (1, None), (None, 3.0), (40, 2.0)])
def test_window_and_softcap(backend, layout, window, softcap):
    rng = random.Random(7)
    kinds = ["extend", "decode", "prefill", "extend", "decode"]
    mb = make_mixed_batch(random_specs(kinds, 16, rng), 2, 4, 32, 16, torch.float32, layout, seed=11)
    out, ref = run(mb, backend, window=window, softcap=softcap, workspace=20)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend,layout", BACKENDS)
def test_triton_under_interpreter(backend, layout):
    specs = [(20, 1), (17, 6), (0, 9), (33, 1), (5, 4)]
    mb = make_mixed_batch(specs, 1, 4, 32, 16, torch.float16, layout, seed=2)
    out, ref = run(mb, backend, provider="triton", window=None, workspace=24)
    assert out.dtype == torch.float16 and rel_err(out, ref) < 2e-3


def test_triton_window_softcap_under_interpreter():
    specs = [(30, 1), (21, 5), (0, 6)]
    mb = make_mixed_batch(specs, 1, 2, 32, 16, torch.float32, "shuffled", seed=3)
    out, ref = run(mb, "ROCM_AITER_FA", provider="triton", window=9, softcap=4.0, workspace=16)
    assert rel_err(out, ref) < 1e-5


def test_extend_with_empty_context():
    # extend_forward directly: one of the extends has no cached context (a plain causal prefill)
    specs = [(0, 5), (23, 4), (0, 2), (9, 3)]
    mb = make_mixed_batch(specs, 2, 2, 32, 16, torch.float32, "shuffled", seed=9)
    torch.ops.rocm_attn.reshape_and_cache(mb.k, mb.v, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.slot_mapping,
                                          "shuffled")
    out = extend_forward(mb.q, mb.k, mb.v, mb.kv_cache, mb.block_table, mb.context_lens, mb.query_lens, mb.scale,
                         0, 0.0, workspace=10)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale)
    assert rel_err(out, ref) < 1e-5


def test_context_rounds_fill_the_workspace():
    rounds = context_rounds([(0, 10), (0, 0), (3, 20), (0, 4)], 8)
    assert all(sum(n for _, n in r) <= 8 for r in rounds)
    assert len(rounds) == -(-(10 + 17 + 4) // 8)  # every round but the last is full
    covered = [[] for _ in range(4)]
    for r in rounds:
        for j, (s, n) in enumerate(r):
            covered[j].extend(range(s, s + n))
    assert covered == [list(range(10)), [], list(range(3, 20)), list(range(4))]


def test_layout_errors():
    mb = make_mixed_batch([(5, 1)], 1, 1, 32, 16, torch.float32, "standard", seed=0)
    with pytest.raises(ValueError, match="shuffled"):
        attention(mb.q, mb.k, mb.v, mb.kv_cache, mb.query_start_loc, mb.seq_lens, mb.block_table, mb.slot_mapping,
                  scale=mb.scale, backend="ROCM_AITER_FA")
    mb = make_mixed_batch([(5, 1)], 1, 1, 32, 16, torch.float32, "shuffled", seed=0)
    with pytest.raises(ValueError, match="standard"):
        attention(mb.q, mb.k, mb.v, mb.kv_cache, mb.query_start_loc, mb.seq_lens, mb.block_table, mb.slot_mapping,
                  scale=mb.scale, backend="ROCM_ATTN")
    with pytest.raises(ValueError, match="tokens"):
        with extend_workspace(0):
            pass
