"""Helpers for tests and benchmarks (tests use --import-mode=importlib, so shared helpers
live in the package rather than in conftest)."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64; 0.0 for empty tensors."""
    if ref.numel() == 0:
        return 0.0
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


# ---------------------------------------------------------------- attention (issue 3)
# A random mixed batch over a paged cache and a dense float64 reference, shared by the
# attention tests of issues 3 and 4 and by the benchmarks. Written independently of the kernels.

import math  # noqa: E402
import random  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass
class MixedBatch:
    q: torch.Tensor  # [T, Hq, D] new tokens' queries, packed
    k: torch.Tensor  # [T, Hkv, D] new tokens' keys (not yet in the cache)
    v: torch.Tensor
    kv_cache: object  # rocm_attn.KVCache with every sequence's context already written
    query_start_loc: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_table: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64
    metadata: object  # AttentionMetadata for the above
    k_full: list  # per sequence [seq_len, Hkv, D]: context + new, for the reference
    v_full: list
    context_lens: list
    query_lens: list
    scale: float


def fp8_gemm_operands(M: int, N: int, K: int, positive: bool = False, device="cuda", generator=None):
    """(xq [M, K], x_scale [M, 1], wq [N, K], w_scale [N, 1]): e4m3fn operands of a PTPC GEMM from randn (or,
    with ``positive``, rand: every product the same sign, the worst case for a truncating accumulator)."""
    draw = torch.rand if positive else torch.randn
    x = draw(M, K, device=device, generator=generator)
    w = draw(N, K, device=device, generator=generator)
    x_scale = x.abs().amax(1, keepdim=True).clamp(min=1e-6) / 448
    w_scale = w.abs().amax(1, keepdim=True).clamp(min=1e-6) / 448
    return (x / x_scale).to(torch.float8_e4m3fn), x_scale, (w / w_scale).to(torch.float8_e4m3fn), w_scale


def fp8_gemm_exact(xq, x_scale, wq, w_scale, bias=None) -> torch.Tensor:
    """The PTPC GEMM of fp8 operands in float64: (xq @ wq^T) * x_scale * w_scale^T (+ bias)."""
    y = (xq.double() @ wq.double().T) * x_scale.double() * w_scale.double().T
    return y if bias is None else y + bias.double()


def boundary_specs(block_size: int) -> list[tuple[int, int]]:
    """(context_len, query_len) pairs at the usual edges: empty context, a context ending exactly on and
    just past a block boundary, decodes whose token starts or ends a block."""
    bs = block_size
    return [(0, 7), (bs, 3), (bs + 1, 5), (2 * bs, 1), (bs - 1, 1), (2 * bs - 1, 2), (0, bs), (0, 1)]


def random_specs(kinds: list[str], block_size: int, rng: random.Random, max_context: int = 80,
                 max_query: int = 24) -> list[tuple[int, int]]:
    """One (context_len, query_len) per kind ("decode" | "extend" | "prefill"), lengths random but often
    on block boundaries."""
    def ctx():
        choice = rng.random()
        if choice < 0.25:
            return block_size * rng.randint(1, max(1, max_context // block_size))
        if choice < 0.5:
            return block_size * rng.randint(0, max(0, max_context // block_size - 1)) + 1
        return rng.randint(1, max_context)

    specs = []
    for kind in kinds:
        if kind == "decode":
            specs.append((ctx() if rng.random() < 0.9 else 0, 1))
        elif kind == "extend":
            specs.append((ctx(), rng.randint(2, max_query)))
        elif kind == "prefill":
            specs.append((0, rng.randint(2, max_query)))
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return specs


def _write_dense_into_cache(kv_cache, blocks: list[int], k_seq: torch.Tensor, v_seq: torch.Tensor) -> None:
    """Put tokens 0..n-1 of one sequence into its blocks, by index arithmetic on the layout (no ops)."""
    n = k_seq.shape[0]
    if n == 0:
        return
    bs, x = kv_cache.block_size, kv_cache.x
    pos = torch.arange(n, device=k_seq.device)
    blk = torch.tensor(blocks, dtype=torch.int64, device=k_seq.device)[pos // bs]
    off = pos % bs
    kt, vt = k_seq.to(kv_cache.dtype), v_seq.to(kv_cache.dtype)  # [n, Hkv, D]
    if kv_cache.layout == "standard":
        kv_cache.k_cache[blk, off] = kt
        kv_cache.v_cache[blk, off] = vt
    else:
        # k [blocks, Hkv, D//x, bs, x] at (blk, h, d // x, off, d % x); v [blocks, Hkv, bs//x, D, x] at
        # (blk, h, off // x, d, off % x)
        kv_cache.k_cache[blk, :, :, off, :] = kt.reshape(n, kt.shape[1], -1, x)
        kv_cache.v_cache[blk, :, off // x, :, off % x] = vt


def make_mixed_batch(specs: list[tuple[int, int]], num_kv_heads: int, group: int, head_dim: int,
                     block_size: int, dtype=torch.float32, layout: str = "standard", device="cpu",
                     seed: int = 0, spare_blocks: int = 3, scale: float | None = None) -> MixedBatch:
    """A batch of sequences (context_len, query_len) in the given order, with random values, random
    (non-contiguous) block ids, and each context already in the cache."""
    from rocm_attn.kernels.attention_metadata import build_metadata
    from rocm_attn.kernels.kv_cache import KVCache

    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    need = [-(-(c + q) // block_size) for c, q in specs]
    num_blocks = sum(need) + spare_blocks
    kv_cache = KVCache(num_blocks, block_size, num_kv_heads, head_dim, dtype, layout, device)
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    tables, k_full, v_full, qs, ks, vs = [], [], [], [], [], []
    hq = num_kv_heads * group
    for (c, q), n in zip(specs, need):
        blocks, ids = ids[:n], ids[n:]
        tables.append(blocks)
        kf = torch.randn(c + q, num_kv_heads, head_dim, generator=gen).to(dtype)
        vf = torch.randn(c + q, num_kv_heads, head_dim, generator=gen).to(dtype)
        _write_dense_into_cache(kv_cache, blocks, kf[:c].to(device), vf[:c].to(device))
        k_full.append(kf.to(device))
        v_full.append(vf.to(device))
        ks.append(kf[c:])
        vs.append(vf[c:])
        qs.append(torch.randn(q, hq, head_dim, generator=gen).to(dtype))
    md = build_metadata([c for c, _ in specs], [q for _, q in specs], tables, block_size, device)
    return MixedBatch(
        q=torch.cat(qs).to(device) if qs else torch.empty(0, hq, head_dim, dtype=dtype, device=device),
        k=torch.cat(ks).to(device) if ks else torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device),
        v=torch.cat(vs).to(device) if vs else torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device),
        kv_cache=kv_cache, query_start_loc=md.query_start_loc, seq_lens=md.seq_lens, block_table=md.block_table,
        slot_mapping=md.slot_mapping, metadata=md, k_full=k_full, v_full=v_full,
        context_lens=[c for c, _ in specs], query_lens=[q for _, q in specs],
        scale=scale if scale is not None else 1.0 / math.sqrt(head_dim),
    )


def reference_attention(q: torch.Tensor, k_full: list, v_full: list, query_lens: list, scale: float,
                        sliding_window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Dense float64 causal GQA attention, one sequence at a time -> [T, Hq, D] float64.

    Query r of a sequence with context c sits at position c + r and sees keys j with
    0 <= (c + r) - j (< sliding_window when given); softcap: c * tanh(s / c) after scaling."""
    outs, start = [], 0
    for kf, vf, n in zip(k_full, v_full, query_lens):
        qb = q[start:start + n].double()
        start += n
        if n == 0:
            continue
        c = kf.shape[0] - n
        group = qb.shape[1] // kf.shape[1]
        kk = kf.double().repeat_interleave(group, dim=1)  # [S, Hq, D]
        vv = vf.double().repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", qb, kk) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        diff = (c + torch.arange(n, device=q.device))[:, None] - torch.arange(kf.shape[0], device=q.device)[None, :]
        visible = diff >= 0
        if sliding_window:
            visible &= diff < sliding_window
        s = s.masked_fill(~visible, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), vv))
    if not outs:
        return q.new_zeros(q.shape, dtype=torch.float64)
    return torch.cat(outs)


# ---------------------------------------------------------------- MLA (issue 8)
# A random mixed batch over a paged latent cache and a dense float64 non-absorbed reference.


@dataclass
class MLABatch:
    q: torch.Tensor  # [T, H, nope + R] new tokens' queries (rope applied)
    kv_c: torch.Tensor  # [T, L] new tokens' latents
    k_pe: torch.Tensor  # [T, R]
    mla_cache: object  # rocm_attn MLACache with every context written
    weights: object  # MLAWeights
    metadata: object  # AttentionMetadata
    latents: list  # per sequence [seq_len, L + R]: context + new
    query_lens: list
    scale: float


def make_mla_batch(specs, num_heads, kv_lora_rank=512, rope_dim=64, nope_dim=128, v_dim=128, block_size=16,
                   dtype=torch.bfloat16, device="cpu", seed=0) -> MLABatch:
    """Sequences (context_len, query_len) in the given order; random latents and kv_b weight; random
    (non-contiguous) block ids; each context already in the cache."""
    from rocm_attn.kernels.attention_metadata import build_metadata
    from rocm_attn.kernels.mla import MLACache
    from rocm_attn.kernels.mla_attention import MLAWeights

    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    need = [-(-(c + q) // block_size) for c, q in specs]
    num_blocks = sum(need) + 2
    cache = MLACache(num_blocks, block_size, kv_lora_rank, rope_dim, dtype, device)
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    tables, latents = [], []
    for (c, q), n in zip(specs, need):
        blocks, ids = ids[:n], ids[n:]
        tables.append(blocks)
        lat = torch.randn(c + q, kv_lora_rank + rope_dim, generator=gen).to(dtype).to(device)
        if c:
            idx = torch.arange(c)
            blk = torch.tensor(blocks, dtype=torch.long)[idx // block_size]
            cache.latent_cache[blk.to(device), (idx % block_size).to(device)] = lat[:c]
        latents.append(lat)
    md = build_metadata([c for c, _ in specs], [q for _, q in specs], tables, block_size, device)
    new = torch.cat([lat[c:] for lat, (c, _) in zip(latents, specs)])
    T = new.shape[0]
    q = torch.randn(T, num_heads, nope_dim + rope_dim, generator=gen).to(dtype).to(device)
    w = (torch.randn(num_heads * (nope_dim + v_dim), kv_lora_rank, generator=gen) / math.sqrt(kv_lora_rank))
    weights = MLAWeights.from_kv_b_proj(w.to(dtype).to(device), num_heads, nope_dim, v_dim)
    return MLABatch(q, new[:, :kv_lora_rank].contiguous(), new[:, kv_lora_rank:].contiguous(), cache, weights, md,
                    latents, [q for _, q in specs], 1.0 / math.sqrt(nope_dim + rope_dim))


def reference_mla(batch: MLABatch) -> torch.Tensor:
    """Dense float64, non-absorbed: per sequence K = [kv_c @ W_UK^T, k_pe], V = kv_c @ W_UV^T, causal -> [T, H, v]."""
    w = batch.weights
    P, L = w.qk_nope_head_dim, w.kv_lora_rank
    wkv = w.kv_b_weight.double().view(w.num_heads, P + w.v_head_dim, L)
    outs, start = [], 0
    for lat, n in zip(batch.latents, batch.query_lens):
        qb = batch.q[start:start + n].double()
        start += n
        lat = lat.double()
        kv = torch.einsum("sl,hdl->shd", lat[:, :L], wkv)  # [S, H, P+V]
        k = torch.cat([kv[..., :P], lat[:, None, L:].expand(-1, w.num_heads, -1)], dim=-1)
        s = torch.einsum("qhd,khd->hqk", qb, k) * batch.scale
        c = lat.shape[0] - n
        diff = (c + torch.arange(n, device=qb.device))[:, None] - torch.arange(lat.shape[0], device=qb.device)[None]
        s = s.masked_fill(diff < 0, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), kv[..., P:]))
    return torch.cat(outs)


def capture_passes(fn, *args, **options):
    """Run ``fn(*args)`` compiled (fullgraph, static shapes, no grad) with only rocm_attn's torch-level
    rewrite passes, no Inductor, so the rewritten graph itself computes the output. ``options`` are
    Config fields. Returns (output, rewritten GraphModule, GraphReport)."""
    from rocm_attn.config import Config
    from rocm_attn.passes import run_passes
    from rocm_attn.passes.report import GraphReport

    seen = {}

    def backend(gm, example_inputs):
        seen["report"] = GraphReport(0)
        seen["gm"] = run_passes(gm, example_inputs, Config(**options), seen["report"])
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)(*args)
    return out, seen["gm"], seen["report"]


def count_calls(gm, *targets) -> int:
    """How many call_function nodes of ``gm`` call one of ``targets``."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


# ---------------------------------------------------------------- MLA decode (kernel-level tests)
def make_latent_cache(seq_lens, L, R, block_size, dtype=torch.float32, seed=0):
    """Random latent rows of each sequence on shuffled pages (other pages hold garbage); dense rows too."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in seq_lens]
    cache = torch.randn(sum(need) + 2, block_size, L + R, generator=gen).to(dtype)
    ids = list(range(cache.shape[0]))
    random.Random(seed).shuffle(ids)
    table = torch.zeros(len(seq_lens), max(max(need), 1), dtype=torch.int32)
    dense = []
    for b, (n, k) in enumerate(zip(seq_lens, need, strict=True)):
        blocks, ids = ids[:k], ids[k:]
        table[b, :k] = torch.tensor(blocks, dtype=torch.int32)
        rows = torch.randn(n, L + R, generator=gen).to(dtype)
        for p in range(n):
            cache[blocks[p // block_size], p % block_size] = rows[p]
        dense.append(rows)
    return cache, table, dense


def reference_mla_decode(q, dense, scale, L):
    """float64 MQA of each sequence's query (all heads) over its latent rows; empty -> 0 and -inf."""
    outs, lses = [], []
    for b, rows in enumerate(dense):
        s = q[b].double() @ rows.double().t() * scale  # [H, n]
        outs.append(torch.softmax(s, -1).nan_to_num(0.0) @ rows.double()[:, :L])
        lses.append(torch.logsumexp(s, -1))
    return torch.stack(outs), torch.stack(lses, dim=1)


# ---------------------------------------------------------------- offline Gluon builds (CPU tests)

def cubin_resource_usage(kernel) -> dict | None:
    """{"regs", "stack"} per thread of a kernel compiled with triton.compile, read with the cuobjdump that ships
    with Triton's NVIDIA backend; None where this Triton has none."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    if not os.path.exists(cuobjdump):
        return None
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    regs, stack = re.search(r"REG:(\d+).*?STACK:(\d+)", usage).groups()
    return dict(regs=int(regs), stack=int(stack))
