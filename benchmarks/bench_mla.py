"""MLA (DeepSeek-V3 shapes) on the GPU: absorbed decode bandwidth vs the copy ceiling, prefill TFLOP/s vs SDPA.

    python benchmarks/bench_mla.py --out results/bench_mla.json            # < 2 min on an H100
    python benchmarks/bench_mla.py --tune --out results/bench_mla_tune.json # sweep the decode kernel's tiles
    python benchmarks/bench_mla.py --resources   # no GPU needed: registers / spills / shared memory on sm_90

128 heads, kv_lora_rank 512 + rope 64 (latent rows of 576 bf16 = 1152 bytes), nope 128, v 128, page 64.

decode  B x ctx = 64/128 x 4k/8k/32k (128 x 32k skipped: 4.8 GB cache is fine, but it is left out to stay
        under 2 min): one mla_decode call (q already absorbed). GB/s = latent-cache bytes read / time,
        vs a device-to-device copy (read + write bytes / time) of 512 MiB ("% copy", every session's
        column) and of the decode's own byte count ("% same-size copy": the same working-set size).
        Target: >= 75% of copy.
        Triton rows: the op (fastest of its candidate configs, picked config named), and the launcher limited to
        the session-3 configs ("classic"), the value-split / chunked-q ones ("vsplit"), the TMA-fed ones
        ("tma", Hopper) or the Gluon kernel ("gluon", sm_90).
        Also the whole decode step (absorb q, mla_decode, W_UV) through mla_attention for B x ctx = 64 x 8k.
prefill one causal sequence S = 4k / 8k on the up-projected problem (q, k [S,128,192], v [S,128,128]):
        our flash_attn_varlen vs F.scaled_dot_product_attention (whatever backend torch picks for
        D 192 / Dv 128, named in the table), causal FLOPs = 2 * S^2/2 * H * (192 + 128). Also the full
        non-absorbed MLA prefill (up-projection + attention) through mla_attention. Target: >= 0.8x SDPA.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

H, L, R, P, V, PAGE = 128, 512, 64, 128, 128, 64
DTYPE = torch.bfloat16


def bench(fn) -> float:
    """Median ms: CUDA-graph replay when the call can be captured, else do_bench."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median"))
    except Exception:
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median"))


def copy_bandwidth_gbs(nbytes: int = 2**30) -> float:
    """(bytes read + written) / time of a device copy moving nbytes in all (default: a 512 MiB copy, the
    "% copy" column of every session); with nbytes = a decode's cache bytes, the "% same-size copy" one."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    gbs = 2 * src.numel() / bench(lambda: dst.copy_(src)) / 1e6
    del src, dst
    torch.cuda.empty_cache()
    return gbs


def decode_setup(batch, ctx, seed=0):
    """A latent cache with `batch` sequences of `ctx` tokens on scattered pages; absorbed q."""
    from rocm_attn.kernels.mla import MLACache

    pages = -(-ctx // PAGE)
    cache = MLACache(batch * pages, PAGE, L, R, DTYPE, "cuda")
    cache.latent_cache.normal_()
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(batch * pages, generator=g).view(batch, pages).to(torch.int32).cuda()
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, H, L + R, dtype=DTYPE, device="cuda")
    return cache, table, seq_lens, q


def decode_rows(copy_gbs, cases, kernels):
    from rocm_attn.kernels import use_kernels
    from rocm_attn.kernels.triton_kernels import mla_decode as md

    rows = []
    for batch, ctx in cases:
        nbytes = batch * ctx * (L + R) * 2
        # a copy moving the bytes the decode reads (half read, half written): the same working-set size
        same_gbs = copy_bandwidth_gbs(nbytes)
        cache, table, lens, q = decode_setup(batch, ctx)
        for prov in kernels:
            def fn(prov=prov):
                with use_kernels(prov):
                    torch.ops.rocm_attn.mla_decode(q, cache.latent_cache, lens, table, 0.1352, L)
            try:
                ms = bench(fn)
            except Exception as e:  # e.g. aiter not usable here
                rows.append(dict(case="decode", batch=batch, ctx=ctx, impl=prov, note=f"{type(e).__name__}: {e}"[:120]))
                continue
            gbs = nbytes / ms / 1e6
            picked = md.tuned_config(q, L, latent_cache=cache.latent_cache) if prov == "triton" else None
            impl = f"mla_decode[{prov}]" + (f" picked {picked.name}" if picked else "")
            rows.append(dict(case="decode", batch=batch, ctx=ctx, impl=impl, ms=ms, gbs=gbs,
                             frac_copy=gbs / copy_gbs, frac_copy_same=gbs / same_gbs))
        # the launcher limited to one family of configs: which family wins, and by how much
        for name, configs in (("classic", md.CLASSIC_CONFIGS), ("vsplit", md.VSPLIT_CONFIGS),
                              ("tma", md.TMA_CONFIGS), ("gluon", md.GLUON_CONFIGS)):
            def limited(configs=configs, q=q, cache=cache, lens=lens, table=table):
                md.mla_decode_launch(q, cache.latent_cache, lens, table, 0.1352, L, configs=configs)

            try:
                ms = bench(limited)
            except RuntimeError as e:  # no config of this family runs here (TMA / Gluon before Hopper)
                rows.append(dict(case="decode", batch=batch, ctx=ctx, impl=f"triton {name} configs",
                                 note=str(e)[:120]))
                continue
            gbs = nbytes / ms / 1e6
            impl = f"triton {name} configs, picked {md.tuned_config(q, L, configs).name}"
            rows.append(dict(case="decode", batch=batch, ctx=ctx, impl=impl, ms=ms, gbs=gbs,
                             frac_copy=gbs / copy_gbs, frac_copy_same=gbs / same_gbs))
        del cache, q
        torch.cuda.empty_cache()
    return rows


def decode_step_row(copy_gbs, batch=64, ctx=8192):
    """The whole absorbed decode step: q_nope @ W_UK, mla_decode, o_lat @ W_UV (no cache write timing change)."""
    from rocm_attn.kernels.attention_metadata import build_metadata
    from rocm_attn.kernels.mla_attention import MLAWeights, mla_attention

    cache, table, lens, _ = decode_setup(batch, ctx)
    md = build_metadata([ctx - 1] * batch, [1] * batch, table.tolist(), PAGE, "cuda")
    w = MLAWeights.from_kv_b_proj(torch.randn(H * (P + V), L, dtype=DTYPE, device="cuda") / 23, H, P, V)
    q = torch.randn(batch, H, P + R, dtype=DTYPE, device="cuda")
    kv_c = torch.randn(batch, L, dtype=DTYPE, device="cuda")
    k_pe = torch.randn(batch, R, dtype=DTYPE, device="cuda")

    def fn():
        mla_attention(q, kv_c, k_pe, cache, w, md.query_start_loc, md.seq_lens, md.block_table, md.slot_mapping,
                      scale=0.1352, metadata=md)

    ms = bench(fn)
    nbytes = batch * ctx * (L + R) * 2
    gbs = nbytes / ms / 1e6
    return dict(case="decode step", batch=batch, ctx=ctx, impl="mla_attention TRITON_MLA", ms=ms, gbs=gbs,
                frac_copy=gbs / copy_gbs, frac_copy_same=gbs / copy_bandwidth_gbs(nbytes))


def sdpa_backend_name(q, k, v) -> str:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([b]):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return b.name.lower()
        except Exception:
            continue
    return "math"


def prefill_rows(seqs):
    from rocm_attn.kernels import use_kernels
    from rocm_attn.kernels.attention_metadata import build_metadata
    from rocm_attn.kernels.mla import MLACache
    from rocm_attn.kernels.mla_attention import MLAWeights, mla_attention

    rows = []
    for S in seqs:
        flops = 2 * S * S / 2 * H * (P + R + V)
        q = torch.randn(S, H, P + R, dtype=DTYPE, device="cuda")
        k = torch.randn(S, H, P + R, dtype=DTYPE, device="cuda")
        v = torch.randn(S, H, V, dtype=DTYPE, device="cuda")
        qt, kt, vt = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, S, D] views, like HF after transpose
        name = sdpa_backend_name(qt, kt, vt)
        sdpa_ms = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=0.0722))
        rows.append(dict(case="prefill", S=S, impl=f"SDPA ({name})", ms=sdpa_ms, tflops=flops / sdpa_ms / 1e9))
        cu = torch.tensor([0, S], dtype=torch.int32, device="cuda")

        def ours():
            with use_kernels("triton"):
                torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cu, cu, S, S, 0.0722, True)

        ms = bench(ours)
        rows.append(dict(case="prefill", S=S, impl="flash_attn_varlen[triton]", ms=ms, tflops=flops / ms / 1e9,
                         vs_sdpa=sdpa_ms / ms))
        # the whole non-absorbed MLA prefill: up-projection + attention (+ cache write)
        cache = MLACache(-(-S // PAGE), PAGE, L, R, DTYPE, "cuda")
        md = build_metadata([0], [S], [list(range(cache.num_blocks))], PAGE, "cuda")
        w = MLAWeights.from_kv_b_proj(torch.randn(H * (P + V), L, dtype=DTYPE, device="cuda") / 23, H, P, V)
        kv_c = torch.randn(S, L, dtype=DTYPE, device="cuda")
        k_pe = torch.randn(S, R, dtype=DTYPE, device="cuda")
        ms = bench(lambda: mla_attention(q, kv_c, k_pe, cache, w, md.query_start_loc, md.seq_lens, md.block_table,
                                         md.slot_mapping, scale=0.0722, metadata=md))
        rows.append(dict(case="prefill", S=S, impl="mla_attention prefill (up-proj + flash)", ms=ms,
                         tflops=flops / ms / 1e9, vs_sdpa=sdpa_ms / ms))
        del q, k, v, qt, kt, vt, cache
        torch.cuda.empty_cache()
    return rows


def tune_grid():
    """DecodeConfigs for --tune; value split / chunked q only at >= 64 heads; 64 x 64 tiles (classic only) fit
    shared memory with one stage; the TMA tiles last."""
    from rocm_attn.kernels.triton_kernels import mla_decode as md
    from rocm_attn.kernels.triton_kernels.mla_decode import DecodeConfig

    grid = []
    for bh in (16, 32, 64, 128):
        for bn in (16, 32, 64):
            for bv, bk in ((None, None), (256, None), (128, None), (None, 128), (256, 128)):
                for w in (4, 8):
                    for st in (1, 2, 3):
                        big = bh * bn > 2048
                        if (big and (bh * bn > 4096 or bv or bk or st > 1)) or (bh < 64 and (bv or bk)) \
                                or (bh == 128 and w == 4):
                            continue
                        grid.append(DecodeConfig(bh, bn, bv, bk, w, st))
    # TMA-fed tiles (Hopper): 64 heads over two warp groups; then the Gluon kernel (sm_90)
    grid += [DecodeConfig(64, bn, None, None, 8, st, kernel="tma") for bn, st in ((64, 1), (64, 2), (32, 2),
                                                                                   (32, 3), (16, 4))]
    grid += md.GLUON_CONFIGS  # one fixed tile
    return grid


def tune(copy_gbs, out_path):
    """Every tune_grid() config at 64 x 8k (heuristic split count), then the 6 fastest at 64 x 8k and 128 x 4k
    with split counts 1..8 and 1 or 4 heads per reduce program. Rows are saved after each one."""
    from rocm_attn.kernels.triton_kernels import mla_decode as md

    rows = []

    def measure(batch, ctx, cache, table, lens, q, cfg, splits=None, reduce_heads=1):
        label = cfg.name + (f" splits{splits}" if splits else "")
        label += f" r{reduce_heads}" if reduce_heads > 1 else ""
        try:
            ms = bench(lambda: md.mla_decode_launch(q, cache.latent_cache, lens, table, 0.1352, L, config=cfg,
                                                    num_splits=splits, reduce_heads=reduce_heads))
        except Exception as e:  # too big for this GPU
            print(f"  skip {label}: {type(e).__name__}", file=sys.stderr)
            return
        gbs = batch * ctx * (L + R) * 2 / ms / 1e6
        rows.append(dict(case="tune", batch=batch, ctx=ctx, impl=label, ms=ms, gbs=gbs,
                         frac_copy=gbs / copy_gbs))
        print(f"  {batch}x{ctx} {label}: {gbs:.0f} GB/s", file=sys.stderr)
        with open(out_path, "w") as fh:
            json.dump(dict(copy_gbs=copy_gbs, rows=rows), fh, indent=1)

    setup = decode_setup(64, 8192)
    for cfg in tune_grid():
        measure(64, 8192, *setup, cfg)
    best = {r["impl"]: r["gbs"] for r in rows}
    top = sorted(tune_grid(), key=lambda c: -best.get(c.name, 0))[:6]
    for batch, ctx in ((64, 8192), (128, 4096)):
        setup = decode_setup(batch, ctx)
        for cfg in top:
            for splits in (1, 2, 3, 4, 6, 8):
                for reduce_heads in (1, 4) if splits > 1 else (1,):
                    measure(batch, ctx, *setup, cfg, splits, reduce_heads)
        del setup
        torch.cuda.empty_cache()
    return sorted(rows, key=lambda r: -r["gbs"])


def resources(configs=None):
    """Compile each decode config for sm_90 here (no GPU: Triton's own ptxas) with the runtime's 16-byte
    alignment hints; registers, spill bytes, shared memory (227 KB fit on an H100), wgmma or mma.sync."""
    import re
    import subprocess

    import triton
    from rocm_attn.kernels.triton_kernels import mla_decode as md
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = md._mla_decode_split_kernel
    if not isinstance(kernel, triton.runtime.JITFunction):  # TRITON_INTERPRET=1 wraps it: compile the source
        kernel = triton.runtime.JITFunction(kernel.fn)
    ptrs = {"Q": "*bf16", "CACHE": "*bf16", "SEQ_LENS": "*i32", "BLOCK_TABLE": "*i32", "MID_O": "*fp32",
            "MID_LSE": "*fp32", "OUT": "*bf16", "LSE": "*fp32"}
    ints = [n for n in kernel.arg_names if n.startswith("stride_")] + ["num_heads"]
    maybe_odd = {"stride_bt", "stride_ml_h"}  # block-table width, split count: not always a multiple of 16
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    lines = ["| config | registers | spill bytes | shared KB | fits | MMA |", "|---|---|---|---|---|---|"]
    for cfg in configs or md.DECODE_CONFIGS:
        if cfg.kernel != "gather":  # other kernels (mla_decode_tma.py, _gluon.py): not compiled here
            continue
        consts = dict(BLOCK_SIZE=PAGE, L=L, R=R, BLOCK_L=L, BLOCK_R=R, BLOCK_H=cfg.block_h,
                      BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v or L, BLOCK_K=cfg.block_k or L,
                      DOT_PREC="tf32")
        sig = {**ptrs, **{n: "i32" for n in ints}, "qk_scale": "fp32", **{k: "constexpr" for k in consts}}
        aligned = [n for n in [*ptrs, *ints] if n not in maybe_odd]
        attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        try:
            k = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        except Exception as e:
            lines.append(f"| {cfg.name} | {type(e).__name__}: {str(e)[:60]} | | | | |")
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            use = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True,
                                 text=True).stdout
        regs, stack = re.search(r"REG:(\d+).*?STACK:(\d+)", use).groups()
        smem = k.metadata.shared
        mma = "wgmma" if "wgmma.mma_async" in k.asm["ptx"] else "mma.sync"
        fits = "yes" if smem <= 232448 else "no"  # 227 KB per block on sm_90
        lines.append(f"| {cfg.name} | {regs} | {stack} | {smem / 1024:.0f} | {fits} | {mma} |")
        print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def markdown(rows, copy_gbs, device, command):
    out = [f"MLA on {device}; copy ceiling {copy_gbs:.0f} GB/s (512 MiB); \"same-size copy\": a copy moving the "
           f"bytes the decode reads; command: `{command}`", "",
           "| case | shape | impl | ms | GB/s | % copy | % same-size copy | TFLOP/s | vs SDPA |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = f"S={r['S']}" if "S" in r else f"{r['batch']}x{r['ctx']}"
        if "note" in r:
            out.append(f"| {r['case']} | {shape} | {r['impl']} | - | - | - | - | - | {r['note']} |")
            continue
        f = lambda k, fmt, scale=1: format(scale * r[k], fmt) if k in r else ""  # noqa: E731
        out.append(f"| {r['case']} | {shape} | {r['impl']} | {r['ms']:.3f} | {f('gbs', '.0f')} | "
                   f"{f('frac_copy', '.0f', 100)} | {f('frac_copy_same', '.0f', 100)} | {f('tflops', '.0f')} | "
                   f"{f('vs_sdpa', '.2f')} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_mla.json", help="JSON results path")
    ap.add_argument("--tune", action="store_true", help="sweep the Triton decode kernel's tiles instead")
    ap.add_argument("--resources", action="store_true",
                    help="no GPU: registers / spills / shared memory of each decode config built for sm_90")
    ap.add_argument("--grid", action="store_true", help="with --resources: the --tune grid")
    args = ap.parse_args(argv)
    if args.resources:
        print(resources(tune_grid() if args.grid else None))
        return
    if not torch.cuda.is_available():
        sys.exit("bench_mla.py needs a GPU")
    from rocm_attn.kernels import get_platform

    import rocm_attn

    t0 = time.time()
    device = torch.cuda.get_device_name(0)
    copy_gbs = copy_bandwidth_gbs()
    command = "python benchmarks/bench_mla.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.tune:
        rows = tune(copy_gbs, args.out)
    else:
        kernels = ["triton"] + (["aiter"] if get_platform().aiter_available else [])
        rows = decode_rows(copy_gbs, [(64, 4096), (64, 8192), (64, 32768), (128, 4096), (128, 8192)], kernels)
        rows.append(decode_step_row(copy_gbs))
        rows += prefill_rows([4096, 8192])
    table = markdown(rows, copy_gbs, device, command)
    print(table)
    print(f"({time.time() - t0:.0f} s)")
    with open(args.out, "w") as fh:
        json.dump(dict(device=device, copy_gbs=copy_gbs, command=command, torch=torch.__version__,
                       rocm_attn=rocm_attn.__version__, rows=rows, table=table), fh, indent=1)


if __name__ == "__main__":
    main()
