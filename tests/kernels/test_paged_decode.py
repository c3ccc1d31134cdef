"""paged_decode: every provider, both layouts, vs the dense float64 reference of rocm_attn.testing."""

import random

import pytest
import torch

from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.triton_kernels.paged_decode import paged_decode_launch
from rocm_attn.testing import make_mixed_batch, random_specs, reference_attention, rel_err

PROVIDERS = ["torch", "triton"]


def decode_batch(n, hkv, group, d, bs, dtype, layout, seed, max_context=80, extra=()):
    rng = random.Random(seed)
    specs = random_specs(["decode"] * n, bs, rng, max_context=max_context) + list(extra)
    return make_mixed_batch(specs, hkv, group, d, bs, dtype, layout, seed=seed)


def check(mb, provider, window=0, softcap=0.0, tol=1e-5, num_splits=None):
    # the new token is written first, as attention() does
    torch.ops.rocm_attn.reshape_and_cache(mb.k, mb.v, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.slot_mapping,
                                          mb.kv_cache.layout)
    args = (mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, mb.scale,
            mb.kv_cache.layout, window, softcap)
    if num_splits is not None:
        out = paged_decode_launch(*args, num_splits=num_splits)
    else:
        with use_kernels(provider):
            out = torch.ops.rocm_attn.paged_decode(*args)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, window or None, softcap or None)
    assert out.shape == mb.q.shape and out.dtype == mb.q.dtype
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("group,d,bs", [(1, 64, 16), (4, 32, 32), (8, 128, 16)])
def test_matches_reference(provider, layout, group, d, bs):
    mb = decode_batch(4, 2, group, d, bs, torch.float32, layout, seed=group + d)
    check(mb, provider)


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("num_splits", [2, 5])
def test_split_kv(layout, num_splits):
    # contexts on and just past block boundaries, one shorter than the number of splits
    mb = make_mixed_batch([(63, 1), (64, 1), (2, 1), (96, 1)], 2, 4, 32, 16, torch.float16, layout, seed=3)
    check(mb, "triton", tol=2e-3, num_splits=num_splits)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("window,softcap", [(7, 0.0), (0, 2.0), (20, 3.0)])
def test_window_softcap(provider, layout, window, softcap):
    mb = decode_batch(3, 1, 4, 32, 16, torch.float16, layout, seed=window)
    check(mb, provider, window, softcap, tol=2e-3)


def test_window_with_splits():
    mb = make_mixed_batch([(90, 1), (5, 1)], 1, 2, 32, 16, torch.float32, "shuffled", seed=4)
    check(mb, "triton", window=33, num_splits=3)


def test_bad_inputs():
    mb = decode_batch(2, 2, 2, 32, 16, torch.float32, "standard", seed=0)
    args = [mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, 0.1, "standard"]
    with pytest.raises(ValueError, match="layout"):
        torch.ops.rocm_attn.paged_decode(*args[:6], "paged")
    with pytest.raises(TypeError, match="int32"):
        torch.ops.rocm_attn.paged_decode(*args[:3], mb.seq_lens.long(), *args[4:])
    with pytest.raises(ValueError, match="multiple of KV heads"):
        torch.ops.rocm_attn.paged_decode(torch.randn(2, 3, 32), *args[1:])
    with pytest.raises(TypeError, match="cache is"):
        torch.ops.rocm_attn.paged_decode(mb.q.half(), *args[1:])


def test_opcheck():
    mb = decode_batch(2, 2, 2, 32, 16, torch.float32, "shuffled", seed=0)
    torch.library.opcheck(torch.ops.rocm_attn.paged_decode.default,
                          (mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, 0.2,
                           "shuffled", 0, 0.0))


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("window,num_splits", [(0, None), (21, None), (0, 3), (21, 2)])
def test_garbage_outside_the_sequence(layout, window, num_splits):
    # every cache slot outside the sequences is NaN: the kernel loads whole pages (wide loads) and
    # must cut the keys past seq_len / before the window without ever multiplying a NaN by 0
    mb = make_mixed_batch([(36, 1), (49, 1), (15, 1), (70, 1)], 2, 4, 32, 16, torch.float32, layout, seed=5)
    mb.kv_cache.k_cache.fill_(float("nan"))
    mb.kv_cache.v_cache.fill_(float("nan"))
    bs = 16
    slots = torch.cat([mb.block_table[b, torch.arange(len(kf)) // bs].long() * bs + torch.arange(len(kf)) % bs
                       for b, kf in enumerate(mb.k_full)])
    torch.ops.rocm_attn.reshape_and_cache(torch.cat(mb.k_full), torch.cat(mb.v_full), mb.kv_cache.k_cache,
                                          mb.kv_cache.v_cache, slots, layout)
    out = paged_decode_launch(mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, mb.scale,
                              layout, window, 0.0, num_splits=num_splits)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, window or None)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5


def test_split_choice_fills_the_gpu():
    from rocm_attn.kernels.triton_kernels import paged_decode as pd

    cpu = torch.device("cpu")  # 2 "SMs" off the GPU
    assert pd.choose_num_splits(64, 8, 4096, cpu) == 1
    assert pd.choose_num_splits(1, 1, 4096, cpu) == min(pd.SPLIT_PROGRAMS_PER_SM * 2, 4096 // pd.MIN_SPLIT_TOKENS)
    assert pd.choose_num_splits(1, 1, 100, cpu) == 1  # too short to split
