"""GPU, real sizes: the flash ops vs SDPA, paged_decode on both layouts, ROCM_AITER_FA and ROCM_ATTN on mixed
batches vs the dense reference. Skipped without a GPU (tests/gpu/conftest.py). Aim: < 60 s on an H100."""

import random

import pytest
import torch
import torch.nn.functional as F

from rocm_attn.kernels import use_kernels
from rocm_attn.kernels.attention import attention
from rocm_attn.kernels.split_attention import extend_workspace
from rocm_attn.kernels.triton_kernels.paged_decode import paged_decode_launch
from rocm_attn.testing import make_mixed_batch, random_specs, reference_attention, rel_err

DEV = "cuda"
BF16_TOL = 2e-2  # bf16 inputs / outputs vs an fp32 or fp64 reference


def sdpa_fp32(q, k, v, **kw):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True, **kw)


@pytest.mark.parametrize("S,D", [(2048, 128), (1000, 64)])
def test_dense_causal_gqa_vs_sdpa(S, D):
    q = torch.randn(2, 32, S, D, device=DEV, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 8, S, D, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    with use_kernels("triton"):
        out = torch.ops.rocm_attn.flash_attention(q, k, v, None, D ** -0.5, True)
    assert rel_err(out, sdpa_fp32(q, k, v, is_causal=True, scale=D ** -0.5)) < BF16_TOL


def test_dense_masks_and_decode_vs_sdpa():
    B, S, D = 4, 700, 128
    q = torch.randn(B, 32, S, D, device=DEV, dtype=torch.bfloat16)
    k, v = (torch.randn(B, 8, S, D, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    pad = torch.zeros(B, 1, S, S, device=DEV, dtype=torch.bfloat16)  # HF style: causal + left padding
    pad.masked_fill_(torch.ones(S, S, device=DEV, dtype=torch.bool).triu(1), torch.finfo(torch.bfloat16).min)
    pad[1, ..., :37] = torch.finfo(torch.bfloat16).min
    pad[1, :, :37, :] = 0  # padded query rows see everything (HF un-masks fully masked rows)
    with use_kernels("triton"):
        out = torch.ops.rocm_attn.flash_attention(q, k, v, pad, 0.09, False)
    assert rel_err(out, sdpa_fp32(q, k, v, attn_mask=pad.float(), scale=0.09)) < BF16_TOL
    boolmask = torch.rand(B, 1, 1, S, device=DEV) > 0.1
    qd = q[:, :, -1:]  # HF decode: Sq = 1 against the cached K/V
    with use_kernels("triton"):
        out = torch.ops.rocm_attn.flash_attention(qd, k, v, boolmask, 0.09, False)
    assert rel_err(out, sdpa_fp32(qd, k, v, attn_mask=boolmask, scale=0.09)) < BF16_TOL


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (256, 0.0), (0, 30.0)])
def test_varlen_vs_torch_reference(window, softcap):
    lens = [1500, 37, 2048, 1, 600]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    T = sum(lens)
    q = torch.randn(T, 32, 128, device=DEV, dtype=torch.bfloat16)
    k, v = (torch.randn(T, 8, 128, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    args = (q, k, v, cu, cu, max(lens), max(lens), 128 ** -0.5, True, window, softcap)
    with use_kernels("triton"):
        out, lse = torch.ops.rocm_attn.flash_attn_varlen(*args)
    with use_kernels("torch"):
        ref, ref_lse = torch.ops.rocm_attn.flash_attn_varlen(*(a.float() if a is q or a is k or a is v else a
                                                              for a in args))
    assert rel_err(out, ref) < BF16_TOL
    torch.testing.assert_close(lse, ref_lse, rtol=1e-2, atol=1e-2)


def test_varlen_fp32_is_exact():
    cu = torch.tensor([0, 300, 429], dtype=torch.int32, device=DEV)
    q = torch.randn(429, 8, 64, device=DEV)
    k, v = torch.randn(429, 2, 64, device=DEV), torch.randn(429, 2, 64, device=DEV)
    with use_kernels("triton"):
        out, _ = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu, cu, 300, 300, 0.125, True)
    with use_kernels("torch"):
        ref, _ = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu, cu, 300, 300, 0.125, True)
    assert rel_err(out, ref) < 1e-5


def decode_batch(n, layout, max_context, seed, dtype=torch.bfloat16):
    rng = random.Random(seed)
    specs = random_specs(["decode"] * n, 16, rng, max_context=max_context)
    mb = make_mixed_batch(specs, 8, 4, 128, 16, dtype, layout, device=DEV, seed=seed)
    torch.ops.rocm_attn.reshape_and_cache(mb.k, mb.v, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.slot_mapping,
                                          layout)
    return mb


@pytest.mark.parametrize("layout", ["standard", "shuffled"])
def test_paged_decode_both_layouts(layout):
    mb = decode_batch(16, layout, 2000, seed=1)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale)
    args = (mb.q, mb.kv_cache.k_cache, mb.kv_cache.v_cache, mb.seq_lens, mb.block_table, mb.scale, layout)
    for provider in ["triton", None]:  # None: auto (AITER pa_fwd_asm on ROCm where it applies)
        with use_kernels(provider):
            out = torch.ops.rocm_attn.paged_decode(*args)
        assert rel_err(out, ref) < BF16_TOL
    for splits in (1, 7):
        assert rel_err(paged_decode_launch(*args, num_splits=splits), ref) < BF16_TOL
    ref_w = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, 500, 20.0)
    with use_kernels("triton"):
        out = torch.ops.rocm_attn.paged_decode(*args, 500, 20.0)
    assert rel_err(out, ref_w) < BF16_TOL


@pytest.mark.parametrize("backend,layout", [("ROCM_AITER_FA", "shuffled"), ("ROCM_ATTN", "standard")])
@pytest.mark.parametrize("window,softcap", [(None, None), (300, 25.0)])
def test_backends_on_mixed_batches(backend, layout, window, softcap):
    rng = random.Random(5)
    kinds = ["decode"] * 12 + ["extend"] * 4 + ["prefill"] * 2
    rng.shuffle(kinds)
    specs = random_specs(kinds, 16, rng, max_context=1500, max_query=400)
    mb = make_mixed_batch(specs, 8, 4, 128, 16, torch.bfloat16, layout, device=DEV, seed=3)
    with use_kernels("triton"), extend_workspace(1024):  # several context rounds
        out = attention(mb.q, mb.k, mb.v, mb.kv_cache, mb.query_start_loc, mb.seq_lens, mb.block_table,
                        mb.slot_mapping, scale=mb.scale, backend=backend, sliding_window=window, softcap=softcap)
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, window, softcap)
    assert rel_err(out, ref) < BF16_TOL
