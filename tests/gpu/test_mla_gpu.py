"""MLA on the GPU at DeepSeek-V3 sizes (L 512, R 64, nope 128, v 128): every provider vs the references.

    python -m pytest tests/gpu/test_mla_gpu.py -q -x
"""

import random

import pytest
import torch

import rocm_attn  # noqa: F401
from rocm_attn.kernels import get_platform, use_kernels
from rocm_attn.kernels.mla_attention import mla_attention
from rocm_attn.testing import make_mla_batch, reference_mla, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
DEV = "cuda"


def decode_providers():
    names = ["triton"]
    if get_platform().aiter_available:
        names.append("aiter")
    return names


@pytest.mark.parametrize("provider", decode_providers())
@pytest.mark.parametrize("batch, heads, max_len, block_size, splits", [
    (8, 128, 4096, 16, None),   # DeepSeek-V3 decode, heuristic split count
    (3, 128, 9000, 64, None),   # few sequences, long contexts: many splits
    (64, 16, 700, 16, 1),       # one split: the direct-write path
    (5, 20, 300, 1, None),      # block size 1 (AITER-style page size), heads not a multiple of 16
])
def test_mla_decode_vs_torch(provider, batch, heads, max_len, block_size, splits):
    from rocm_attn.kernels.mla import mla_decode_torch
    from rocm_attn.kernels.triton_kernels.mla_decode import mla_decode_launch

    if provider == "aiter" and heads % 16:
        pytest.skip("AITER MLA decode: heads a multiple of 16")
    rng = random.Random(batch)
    lens = [rng.randint(1, max_len) for _ in range(batch)]
    lens[0] = max_len
    b = make_mla_batch([(n - 1, 1) for n in lens], heads, block_size=block_size, dtype=torch.bfloat16, device=DEV)
    md = b.metadata
    # write the new tokens too, then decode in latent space
    torch.ops.rocm_attn.mla_reshape_and_cache(b.kv_c, b.k_pe, b.mla_cache.latent_cache, md.slot_mapping)
    q = torch.randn(batch, heads, 576, device=DEV, dtype=torch.bfloat16)
    args = (q, b.mla_cache.latent_cache, md.seq_lens, md.block_table, 0.1352, 512)
    ref, ref_lse = mla_decode_torch(*args)
    if provider == "triton" and splits is not None:
        out, lse = mla_decode_launch(*args, num_splits=splits)
    else:
        with use_kernels(provider):
            out, lse = torch.ops.rocm_attn.mla_decode(*args)
    assert rel_err(out, ref.float()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("backend", ["TRITON_MLA", "ROCM_AITER_MLA"])
def test_mixed_batch_vs_dense_reference(backend):
    """Decodes, extends (context over several workspace rounds) and prefills, in random order."""
    rng = random.Random(0)
    specs = [(rng.randint(1, 3000), 1) for _ in range(12)]
    specs += [(rng.randint(1, 2500), rng.randint(2, 300)) for _ in range(3)]
    specs += [(0, rng.randint(2, 700)) for _ in range(2)] + [(0, 1), (2048, 1), (2047, 5)]
    rng.shuffle(specs)
    b = make_mla_batch(specs, num_heads=16, dtype=torch.bfloat16, device=DEV)
    md = b.metadata
    out = mla_attention(b.q, b.kv_c, b.k_pe, b.mla_cache, b.weights, md.query_start_loc, md.seq_lens,
                        md.block_table, md.slot_mapping, scale=b.scale, backend=backend, metadata=md,
                        workspace=2048)
    assert rel_err(out, reference_mla(b)) < 2e-2


def test_128_heads_decode_batch_vs_dense_reference():
    specs = [(random.Random(i).randint(100, 1500), 1) for i in range(8)]
    b = make_mla_batch(specs, num_heads=128, dtype=torch.bfloat16, device=DEV, seed=1)
    md = b.metadata
    out = mla_attention(b.q, b.kv_c, b.k_pe, b.mla_cache, b.weights, md.query_start_loc, md.seq_lens,
                        md.block_table, md.slot_mapping, scale=b.scale, metadata=md)
    assert rel_err(out, reference_mla(b)) < 2e-2
