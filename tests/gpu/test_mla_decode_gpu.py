"""Every mla_decode stage-1 config (classic, the untimed value-split / chunked-q ones, TMA-fed, Gluon) at
DeepSeek-V3 sizes vs the torch provider, one and several splits, 1 or 4 heads per reduce program; the
launcher's pick, with and without the TMA / Gluon candidates; NaN in the unused rows of the last pages.

    python -m pytest tests/gpu/test_mla_decode_gpu.py -x
"""

import random

import pytest
import torch
import triton

import rocm_attn  # noqa: F401
from rocm_attn.kernels.mla import mla_decode_torch
from rocm_attn.kernels.triton_kernels import mla_decode as md
from rocm_attn.testing import make_mla_batch, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def decode_args(batch, heads, max_len, block_size=64, seed=0):
    rng = random.Random(seed)
    lens = [1, block_size - 1, block_size + 1, max_len] + [rng.randint(1, max_len) for _ in range(batch - 4)]
    b = make_mla_batch([(n - 1, 1) for n in lens], heads, block_size=block_size, dtype=torch.bfloat16,
                       device="cuda")
    cache = b.mla_cache.latent_cache
    torch.ops.rocm_attn.mla_reshape_and_cache(b.kv_c, b.k_pe, cache, b.metadata.slot_mapping)
    q = torch.randn(len(lens), heads, 576, device="cuda", dtype=torch.bfloat16)
    return q, cache, b.metadata.seq_lens, b.metadata.block_table, 0.1352, 512


@pytest.mark.parametrize("cfg", md.DECODE_CONFIGS + md.TMA_CONFIGS + md.GLUON_CONFIGS,
                         ids=lambda c: c.name.replace(" ", "-"))
@pytest.mark.parametrize("splits, reduce_heads", [(1, 1), (None, 1), (5, 4)])
def test_config_vs_torch(cfg, splits, reduce_heads):
    args = decode_args(6, 128, 3000)
    reason = md.unsupported_reason(cfg, args[0], args[1], args[5])
    if reason:
        pytest.skip(f"{cfg.name}: {reason}")
    ref, ref_lse = mla_decode_torch(*args)
    try:
        out, lse = md.mla_decode_launch(*args, num_splits=splits, config=cfg, reduce_heads=reduce_heads)
    except triton.runtime.errors.OutOfResources as exc:
        pytest.skip(f"{cfg.name} does not fit this GPU: {exc}")
    assert rel_err(out, ref.float()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)


def test_launcher_picks_one_of_its_configs_and_heads_not_a_multiple_of_the_tile():
    args = decode_args(5, 40, 900, block_size=16, seed=1)
    out, lse = md.mla_decode_launch(*args)
    assert md.tuned_config(args[0], 512) in md.DECODE_CONFIGS
    ref, ref_lse = mla_decode_torch(*args)
    assert rel_err(out, ref.float()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)


def test_launcher_with_tma_candidates_and_nan_past_the_ends():
    # 128 heads on 64-token pages: the TMA tiles are candidates; the rows after each sequence's end in its
    # last page hold NaN (a fresh cache may), which no config may read into the product
    q, cache, lens, table, scale, L = decode_args(7, 128, 2000, seed=2)
    for b, n in enumerate(lens.tolist()):
        if n % 64:
            cache[table[b, (n - 1) // 64], n % 64:] = float("nan")
    candidates = md.candidate_configs(q, cache, L)
    assert set(md.TMA_CONFIGS) <= set(candidates)  # and the Gluon one on an sm_90 GPU
    ref, ref_lse = mla_decode_torch(q, cache, lens, table, scale, L)
    out, lse = md.mla_decode_launch(q, cache, lens, table, scale, L)
    assert md.tuned_config(q, L, latent_cache=cache) in candidates
    assert rel_err(out, ref.float()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)
    for cfg in [c for c in md.TMA_CONFIGS + md.GLUON_CONFIGS if c in candidates]:
        for splits in (1, 4):
            out, _ = md.mla_decode_launch(q, cache, lens, table, scale, L, config=cfg, num_splits=splits)
            assert rel_err(out, ref.float()) < 1e-2, (cfg.name, splits)


@pytest.mark.parametrize("block_n, stages", [(32, 4), (16, 8)])
def test_gluon_tile_and_ring_parameters(block_n, stages):
    # launch_gluon's tile / ring knobs (the launcher keeps 64 x 2, the fastest: RESULTS Session 14)
    from rocm_attn.kernels.triton_kernels import mla_decode_gluon as mg

    q, cache, lens, table, scale, L = decode_args(6, 128, 1500, seed=3)
    if mg.unsupported_reason(q, cache, L, block_n):
        pytest.skip(mg.unsupported_reason(q, cache, L, block_n))
    ref, ref_lse = mla_decode_torch(q, cache, lens, table, scale, L)
    for splits in (1, 3):
        out = torch.empty(q.shape[0], q.shape[1], L, dtype=q.dtype, device="cuda")
        lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device="cuda")
        mg.launch_gluon(q, cache, lens, table, scale, L, splits, out, lse, block_n=block_n, stages=stages)
        assert rel_err(out, ref.float()) < 1e-2
        torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("heads", [16, 40])
def test_gluon_with_heads_not_a_multiple_of_64(heads):
    # tensor parallel leaves 16 heads per GPU (DeepSeek-V3 over 8): a program's q tile then also holds the next
    # sequence's rows, whose outputs must not be stored
    from rocm_attn.kernels.triton_kernels import mla_decode_gluon as mg

    q, cache, lens, table, scale, L = decode_args(7, heads, 1500, seed=4)
    if mg.unsupported_reason(q, cache, L):
        pytest.skip(mg.unsupported_reason(q, cache, L))
    ref, ref_lse = mla_decode_torch(q, cache, lens, table, scale, L)
    for splits in (1, 3):
        out, lse = md.mla_decode_launch(q, cache, lens, table, scale, L, config=md.GLUON_CONFIGS[0],
                                        num_splits=splits)
        assert rel_err(out, ref.float()) < 1e-2
        torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)
    out, lse = md.mla_decode_launch(q, cache, lens, table, scale, L)  # the launcher's pick
    assert md.tuned_config(q, L, latent_cache=cache) in md.candidate_configs(q, cache, L)
    assert rel_err(out, ref.float()) < 1e-2


def test_launcher_picks_per_batch_bucket_and_inside_a_graph_capture(monkeypatch):
    monkeypatch.setattr(md, "_tuned", {})
    small, big = decode_args(4, 128, 2048, seed=6), decode_args(64, 128, 2048, seed=7)
    md.mla_decode_launch(*small)
    assert md.tuned_config(small[0], 512, latent_cache=small[1]) is not None
    assert md.tuned_config(big[0], 512, latent_cache=big[1]) is None  # batch 64 is not batch 4's pick
    md.mla_decode_launch(*big)
    assert md.tuned_config(big[0], 512, latent_cache=big[1]) is not None
    # a batch first met inside a CUDA-graph capture: an untimed pick (nothing can be timed there), not kept
    q, cache, lens, table, scale, L = decode_args(5, 128, 700, seed=8)
    md.mla_decode_launch(q, cache, lens, table, scale, L, config=md.untimed_pick(
        tuple(md.candidate_configs(q, cache, L))))  # compiled before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = md.mla_decode_launch(q, cache, lens, table, scale, L)
    graph.replay()
    torch.cuda.synchronize()
    assert md.tuned_config(q, L, latent_cache=cache) is None
    ref, ref_lse = mla_decode_torch(q, cache, lens, table, scale, L)
    assert rel_err(out, ref.float()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kernel", ["gather", "tma", "gluon"])
def test_compiled_launch_path_matches_the_first_call(kernel, monkeypatch):
    # after the first call of a specialization the launcher calls the compiled kernel directly
    # (launch_cache.py); fresh inputs at each call, and calls whose ints differ in what Triton specializes on
    # (heads 128 vs 40: strides divisible by 16 or not; one split vs several: zero partial strides)
    from rocm_attn.kernels.triton_kernels import mla_decode_gluon as mg
    from rocm_attn.kernels.triton_kernels import mla_decode_tma as mt

    module, name, cfg = {
        "gather": (md, "_COMPILED_SPLIT", md.DecodeConfig(32, 64, None, None, 4, 2)),
        "tma": (mt, "_COMPILED", md.TMA_CONFIGS[0]),
        "gluon": (mg, "_COMPILED", md.GLUON_CONFIGS[0]),
    }[kernel]
    monkeypatch.setattr(module, name, {})
    cache_dict = getattr(module, name)
    for heads in ((128, 192) if kernel == "tma" else (128, 40)):  # the TMA tile takes multiples of 64 heads
        for splits in (1, 3):
            for seed in (10, 11, 12):
                q, cache, lens, table, scale, L = decode_args(6, heads, 1200, seed=seed + heads + splits)
                if kernel == "gluon" and mg.unsupported_reason(q, cache, L):
                    pytest.skip(mg.unsupported_reason(q, cache, L))
                out, lse = md.mla_decode_launch(q, cache, lens, table, scale, L, config=cfg, num_splits=splits)
                ref, ref_lse = mla_decode_torch(q, cache, lens, table, scale, L)
                assert rel_err(out, ref.float()) < 1e-2, (heads, splits, seed)
                torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)
    # one compiled stage-1 kernel per specialization, reused by the later seeds: (two head counts) x (1 / 3
    # splits)
    assert 4 <= len(cache_dict) <= 8
