"""kernels/triton_kernels/mla_decode.py under the interpreter: every stage-1 variant (value split BLOCK_V,
chunked q BLOCK_K, both) and the multi-head reduce vs a float64 reference on small L; the split count
per config; the config picker; bad tiles."""

import pytest
import torch
from rocm_attn.kernels.triton_kernels import mla_decode as md
from rocm_attn.kernels.triton_kernels.mla_decode import DecodeConfig, mla_decode_launch

from rocm_attn.testing import make_latent_cache as make_cache
from rocm_attn.testing import reference_mla_decode as reference_decode
from rocm_attn.testing import rel_err


def check(q, cache, table, dense, seq_lens, scale, L, tol=1e-5, **kw):
    out, lse = mla_decode_launch(q, cache, torch.tensor(seq_lens, dtype=torch.int32), table, scale, L, **kw)
    ref, ref_lse = reference_decode(q, dense, scale, L)
    assert out.shape == ref.shape and lse.shape == ref_lse.shape
    assert rel_err(out, ref) < tol
    torch.testing.assert_close(lse.double(), ref_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize("block_v, block_k", [(32, None), (None, 16), (16, 32), (32, 16)])
@pytest.mark.parametrize("splits", [1, 3])
def test_variants_match_reference(block_v, block_k, splits):
    # 20 heads: the second 16-head group is partial; lens 1, block_size -/+ 1, empty, several tiles
    L, R, bs, lens = 64, 16, 8, [1, 7, 9, 0, 40]
    cache, table, dense = make_cache(lens, L, R, bs, seed=splits)
    q = torch.randn(len(lens), 20, L + R)
    check(q, cache, table, dense, lens, 0.3, L, num_splits=splits,
          config=DecodeConfig(16, 16, block_v, block_k, 4, 1))


def test_l_not_power_of_two_and_multi_head_reduce():
    # L 48 pads to 64: the second value slice and the last q chunk are partly masked; 18 heads, 4 per reduce
    L, R, bs, lens = 48, 8, 4, [13, 3, 5]
    cache, table, dense = make_cache(lens, L, R, bs, seed=5)
    q = torch.randn(len(lens), 18, L + R)
    check(q, cache, table, dense, lens, 0.25, L, num_splits=4, reduce_heads=4,
          config=DecodeConfig(16, 16, 32, 16, 4, 1))


def test_more_splits_than_tiles():
    # 5 splits of a 9-token sequence: some splits are empty and must not poison the merge
    L, R, bs, lens = 32, 16, 16, [9, 17]
    cache, table, dense = make_cache(lens, L, R, bs, seed=2)
    q = torch.randn(len(lens), 16, L + R)
    check(q, cache, table, dense, lens, 0.4, L, num_splits=5, reduce_heads=2,
          config=DecodeConfig(16, 16, 16, 16, 4, 1))


def test_fp16_value_split():
    L, R, bs, lens = 64, 16, 8, [20, 9]
    cache, table, dense = make_cache(lens, L, R, bs, dtype=torch.float16, seed=1)
    q = torch.randn(len(lens), 16, L + R).half()
    check(q, cache, table, dense, lens, 0.15, L, tol=2e-3, num_splits=2,
          config=DecodeConfig(16, 16, 32, 32, 4, 1))


def test_num_splits_counts_the_configs_programs():
    # DeepSeek-V3 decode on 132 SMs: split only while one split per sequence leaves SMs idle
    assert md.num_splits_for(64, 128, 512, DecodeConfig(16, 32), 132) == 1  # 8 head groups: 512 programs
    assert md.num_splits_for(64, 128, 512, DecodeConfig(64, 32), 132) == 1  # 2 head groups: 128 programs
    assert md.num_splits_for(16, 128, 512, DecodeConfig(64, 32), 132) == 4  # 32 programs -> 128
    assert md.num_splits_for(8, 128, 512, DecodeConfig(64, 32, 256), 132) == 4  # 2 groups x 2 value slices
    assert md.num_splits_for(4, 128, 512, DecodeConfig(64, 32, 128, 128), 132) == 4  # x 4 value slices
    assert md.num_splits_for(1, 128, 512, DecodeConfig(64, 32), 132) == 64  # capped
    assert md.num_splits_for(512, 128, 512, DecodeConfig(16, 32), 132) == 1


def test_pick_config_takes_the_fastest_that_runs(monkeypatch):
    monkeypatch.setattr(md, "_tuned", {})
    a, b, c = DecodeConfig(16, 32), DecodeConfig(64, 32, 256), DecodeConfig(64, 64, 256)
    fake_ms = {a: 3.0, b: 1.0, c: 0.5}
    ran = []

    def run(cfg):
        ran.append(cfg)
        if cfg == c:
            raise RuntimeError("out of shared memory")

    def timer(fn):
        fn()
        return fake_ms[ran[-1]]

    assert md.pick_config("k", (a, b, c), run, timer) == b
    assert md.pick_config("k", (a, b, c), run, timer) == b and len(ran) == 3  # cached: not timed again
    with pytest.raises(RuntimeError, match="no config"):
        md.pick_config("k2", (c,), run, timer)


def test_tune_key_buckets_the_batch():
    # a pick made at batch 1 must not serve batch 64 (at 64 x 4k the Gluon kernel runs 2.5x the batch-1 pick)
    L = 512
    key = lambda b: md._tune_key(torch.empty(b, 128, L + 64), L, tuple(md.DECODE_CONFIGS))  # noqa: E731
    assert key(1) != key(64) and key(2) != key(3)
    assert key(33) == key(64) and key(3) == key(4)


def test_untimed_pick_prefers_gluon_then_tma():
    assert md.untimed_pick(tuple(md.DECODE_CONFIGS + md.TMA_CONFIGS + md.GLUON_CONFIGS)) == md.GLUON_CONFIGS[0]
    assert md.untimed_pick(tuple(md.DECODE_CONFIGS + md.TMA_CONFIGS)) == md.TMA_CONFIGS[0]
    assert md.untimed_pick(tuple(md.DECODE_CONFIGS)) == md.DECODE_CONFIGS[0]


def test_interpreter_default_and_explicit_config_agree():
    L, R, bs, lens = 32, 16, 8, [11, 30]
    cache, table, dense = make_cache(lens, L, R, bs, seed=4)
    q = torch.randn(len(lens), 17, L + R)
    check(q, cache, table, dense, lens, 0.2, L)  # the fixed interpreter tile, 3 splits
    assert md.tuned_config(q, L) is None  # nothing tuned off the GPU


@pytest.mark.parametrize("kw, msg", [
    (dict(config=DecodeConfig(16, 16, 24)), "block_v=24 must be a power of two"),
    (dict(config=DecodeConfig(8, 16)), "block_h=8 must be a power of two >= 16"),
    (dict(config=DecodeConfig(16, 16, None, 64)), "block_k=64 is wider than the padded L=32"),
    (dict(reduce_heads=3), "reduce_heads=3"),
])
def test_bad_tiles_raise(kw, msg):
    cache, table, _ = make_cache([5], 32, 16, 8)
    with pytest.raises(ValueError, match=msg):
        mla_decode_launch(torch.randn(1, 16, 48), cache, torch.tensor([5]), table, 0.3, 32, **kw)
