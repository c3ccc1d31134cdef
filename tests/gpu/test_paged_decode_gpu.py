"""GPU, real sizes: the Triton paged decode kernel on both layouts, every tuned config family, vs the
float64 dense reference: bf16/fp16, GQA 1/4/8, contexts on and off tile edges, windows, split counts,
and NaN in every cache slot outside the sequences (the kernel loads whole pages)."""

import random

import pytest
import torch

from rocm_attn.kernels.triton_kernels.paged_decode import paged_decode_launch
from rocm_attn.testing import make_mixed_batch, reference_attention, rel_err

DEV = "cuda"
TOL = 2e-2
CONFIGS = [None, dict(BLOCK_N=32, num_warps=4, num_stages=3), dict(BLOCK_N=128, num_warps=8, num_stages=3)]


def poisoned_batch(specs, hkv, group, d, layout, dtype, seed):
    """make_mixed_batch, then every cache slot NaN except the sequences' tokens (all of them written)."""
    mb = make_mixed_batch(specs, hkv, group, d, 16, dtype, layout, device=DEV, seed=seed)
    mb.kv_cache.k_cache.fill_(float("nan"))
    mb.kv_cache.v_cache.fill_(float("nan"))
    slots = torch.cat([mb.block_table[b, torch.arange(len(kf), device=DEV) // 16].long() * 16
                       + torch.arange(len(kf), device=DEV) % 16 for b, kf in enumerate(mb.k_full)])
    torch.ops.rocm_attn.reshape_and_cache(torch.cat(mb.k_full), torch.cat(mb.v_full), mb.kv_cache.k_cache,
                                          mb.kv_cache.v_cache, slots, layout)
    return mb


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_configs_and_splits(layout, dtype):
    rng = random.Random(7)
    lens = [4096, 4097, 4095, 64, 65, 1, 17] + [rng.randrange(1, 9000) for _ in range(9)]
    mb = poisoned_batch([(n - 1, 1) for n in lens], 8, 4, 128, layout, dtype, seed=1)
    args = (mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, mb.scale, layout)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale)
    ref_w = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, 1000)
    for config in CONFIGS if dtype == torch.bfloat16 else CONFIGS[:1]:  # compile time: one config for fp16
        for splits in (None, 1, 3, 16):
            out = paged_decode_launch(*args, num_splits=splits, config=config)
            assert torch.isfinite(out).all(), (config, splits)
            assert rel_err(out, ref) < TOL, (config, splits)
        out = paged_decode_launch(*args, 1000, 0.0, config=config)  # window 1000: not a multiple of any tile
        assert rel_err(out, ref_w) < TOL, config


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
@pytest.mark.parametrize("hkv,group", [(32, 1), (4, 8)])
def test_gqa_ratios_softcap(layout, hkv, group):
    mb = poisoned_batch([(3000, 1), (511, 1), (12000, 1)], hkv, group, 128, layout, torch.bfloat16, seed=2)
    args = (mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, mb.scale, layout)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, None, 30.0)
    assert rel_err(paged_decode_launch(*args, 0, 30.0), ref) < TOL


def test_unified_decode_route():
    # a decode-only batch through the unified launcher (paged decode kernel on the standard layout,
    # the unified kernel on the shuffled one) and through paged_decode's provider: same answer
    from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch

    for layout in ("standard", "shuffled"):
        mb = poisoned_batch([(2047, 1)] * 8, 8, 4, 128, layout, torch.bfloat16, seed=3)
        ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale)
        out = torch.ops.rocm_attn.paged_decode(mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens,
                                               mb.block_table, mb.scale, layout)
        assert rel_err(out, ref) < TOL, layout
        for split_kv in (None, True, False):
            out = unified_attention_launch(mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.query_start_loc,
                                           mb.seq_lens, mb.block_table, mb.scale, layout, 0, 0.0, 1, 2048,
                                           split_kv=split_kv)
            assert rel_err(out, ref) < TOL, (layout, split_kv)
