"""kernels/triton_kernels/mla_decode_tma.py under the interpreter (host TMA descriptors run there too): the
TMA-fed stage 1 vs a float64 reference with partial last tiles, empty and several splits, NaN in the unused
rows of the last page; when it may run (tma_unsupported_reason); the launcher's candidates."""

import pytest
import torch
from rocm_attn.kernels.triton_kernels import mla_decode as md
from rocm_attn.kernels.triton_kernels.mla_decode import DecodeConfig, mla_decode_launch
from rocm_attn.kernels.triton_kernels.mla_decode_tma import tma_unsupported_reason

from rocm_attn.testing import make_latent_cache as make_cache
from rocm_attn.testing import reference_mla_decode, rel_err

TMA_TILE = DecodeConfig(16, 16, None, None, 4, 1, kernel="tma")


def check(q, cache, table, dense, seq_lens, scale, L, tol=1e-5, **kw):
    out, lse = mla_decode_launch(q, cache, torch.tensor(seq_lens, dtype=torch.int32), table, scale, L, **kw)
    ref, ref_lse = reference_mla_decode(q, dense, scale, L)
    assert rel_err(out, ref) < tol
    torch.testing.assert_close(lse.double(), ref_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize("splits", [1, 3])
def test_tma_kernel_matches_reference(splits):
    # 32 heads = two 16-head programs; lens: one row, a page minus / plus one, empty, whole pages, 3.5 pages
    L, R, bs, lens = 64, 16, 32, [1, 31, 33, 0, 64, 112]
    cache, table, dense = make_cache(lens, L, R, bs, seed=splits)
    q = torch.randn(len(lens), 32, L + R)
    check(q, cache, table, dense, lens, 0.3, L, num_splits=splits, config=TMA_TILE)


def test_rows_past_the_end_never_reach_the_product():
    # a fresh cache may hold NaN: the partial last tile is read through masked loads, so they stay out
    L, R, bs, lens = 64, 16, 32, [20, 50]
    cache, table, dense = make_cache(lens, L, R, bs, seed=7)
    for b, n in enumerate(lens):
        last = table[b, (n - 1) // bs]
        cache[last, n % bs:] = float("nan")
    q = torch.randn(len(lens), 16, L + R)
    check(q, cache, table, dense, lens, 0.3, L, num_splits=2, config=TMA_TILE)


def test_fp16_tma():
    L, R, bs, lens = 64, 16, 16, [40, 7]
    cache, table, dense = make_cache(lens, L, R, bs, dtype=torch.float16, seed=3)
    q = torch.randn(len(lens), 16, L + R).half()
    check(q, cache, table, dense, lens, 0.2, L, tol=2e-3, num_splits=1, config=TMA_TILE)


@pytest.mark.parametrize("heads, L, R, bs, why", [
    (24, 64, 16, 16, "24 heads are not a multiple of the 16-head tile"),
    (16, 64, 16, 8, "block_size 8 is not a multiple of the 16-token tile"),
    (16, 48, 16, 16, "kv_lora_rank / 2 = 24 is not a power of two"),
    (16, 64, 24, 16, "qk_rope_head_dim = 24 is not a power of two"),
])
def test_ineligible_calls_say_why(heads, L, R, bs, why):
    cache, table, _ = make_cache([5], L, R, bs)
    q = torch.randn(1, heads, L + R)
    assert why in tma_unsupported_reason(q, cache, L, 16, 16)
    with pytest.raises(ValueError, match="cannot run here: " + why.split(" is")[0].split(" are")[0]):
        mla_decode_launch(q, cache, torch.tensor([5]), table, 0.3, L, config=TMA_TILE)


def test_non_contiguous_cache_is_not_eligible():
    cache, _, _ = make_cache([5], 64, 16, 16)
    wide = torch.randn(cache.shape[0], 16, 96)[..., :80]  # rows 96 wide: a strided view
    q = torch.randn(1, 16, 80)
    assert tma_unsupported_reason(q, cache, 64, 16, 16) is None
    assert "contiguous" in tma_unsupported_reason(q, wide, 64, 16, 16)


def test_candidates_add_tma_only_where_it_runs():
    cache, _, _ = make_cache([5], 64, 16, 64)  # page 64: the 64-token TMA tile fits
    assert md.candidate_configs(torch.randn(1, 128, 80), cache, 64) == md.DECODE_CONFIGS + md.TMA_CONFIGS
    assert md.candidate_configs(torch.randn(1, 40, 80), cache, 64) == md.DECODE_CONFIGS  # 40 heads
    assert md.candidate_configs(torch.randn(1, 16, 80), cache, 64) == [md.SMALL_CONFIG]  # <= 16: one gather tile


def test_tma_config_with_a_value_split_is_refused():
    cache, table, _ = make_cache([5], 64, 16, 16)
    with pytest.raises(ValueError, match="tma config has no value split"):
        mla_decode_launch(torch.randn(1, 16, 80), cache, torch.tensor([5]), table, 0.3, 64,
                          config=DecodeConfig(16, 16, 32, None, 4, 1, kernel="tma"))
