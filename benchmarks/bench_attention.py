"""Paged attention through rocm_attn.attention() vs SDPA (flash) and the copy bandwidth (GPU only).

    python benchmarks/bench_attention.py --out results/bench_attention.json           # full, < 4 min (H100)
    python benchmarks/bench_attention.py --quick --out results/bench_attention.json   # subset, < 90 s
    python benchmarks/bench_attention.py --mixes --out results/bench_mixes.json       # issue-4 mixes only
    python benchmarks/bench_attention.py --tune                                       # sweep unified configs

GQA 32/8, D = 128, bf16, page 16. Every backend name (TRITON_ATTN, ROCM_AITER_UNIFIED_ATTN,
ROCM_AITER_FA, ROCM_ATTN) on both KV layouts; names not registered, or not taking a layout, get a
note in the table instead of a time. Times are medians (CUDA-graph replay when the backend can be
captured, else triton do_bench) of one attention() call with prebuilt metadata, which includes
writing the step's new k/v into the cache (reshape_and_cache).

Cases and what they are compared with:
  prefill S=4k/16k   one causal sequence; TFLOP/s (causal FLOPs) vs F.scaled_dot_product_attention pinned
                     to its flash backend (the baseline note gives SDPA's default backend and time too)
  decode B x ctx     64x4k, 256x2k, 16x32k; K/V GB/s read vs SDPA on contiguous K/V and vs a d2d copy
  mixed              decode-heavy: 64 decodes (ctx 4k) + one 2k or 512-token prefill (in kind order, as
                     vLLM schedules it; and the 512 one first, so the split backends must reorder);
                     8 extends (512 on 4k) + 32 decodes. The table ends with the issue-4 ratio
                     TRITON_ATTN ms / ROCM_AITER_FA ms per mix (target >= 1.15)
  seed extend        one request, 3616 new tokens on a 20000-token context (the seeds' case) vs SDPA
                     on the same Q over the full contiguous K/V (bottom-right causal if this torch has it)
Targets (issue 3): unified prefill >= 0.8x SDPA-flash TFLOP/s at S >= 4k; decode >= 80% of copy GB/s.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
BACKENDS = ["TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN", "ROCM_AITER_FA", "ROCM_ATTN"]
LAYOUTS = ["standard", "shuffled"]


def bench(fn) -> tuple[float, str]:
    """(median ms, timing method): CUDA-graph replay, or plain do_bench when capture fails."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median")), "graph"
    except Exception:
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")), "eager"


def copy_bandwidth_gbs() -> float:
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms, _ = bench(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6  # read + write


# ---------------------------------------------------------------- building a paged batch on the GPU

class Step:
    """One engine step: sequences (context_len, query_len), their cache (context already written),
    the new tokens' q/k/v and the metadata."""

    def __init__(self, specs, layout, seed=0):
        from rocm_attn.kernels.attention_metadata import build_metadata
        from rocm_attn.kernels.kv_cache import KVCache

        gen = torch.Generator(device="cuda").manual_seed(seed)
        need = [-(-(c + q) // PAGE) for c, q in specs]
        self.cache = KVCache(sum(need) + 1, PAGE, HKV, D, DTYPE, layout, "cuda")
        perm = torch.randperm(sum(need) + 1, device="cpu").tolist()  # scattered pages, like a real engine
        tables, i = [], 0
        for n in need:
            tables.append(perm[i:i + n])
            i += n
        ctx_md = build_metadata([0] * len(specs), [c for c, _ in specs], tables, PAGE, "cuda")
        for c0 in range(0, ctx_md.num_tokens, 1 << 18):  # write the contexts in chunks (memory)
            c1 = min(c0 + (1 << 18), ctx_md.num_tokens)
            kv = torch.randn(2, c1 - c0, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
            torch.ops.rocm_attn.reshape_and_cache(kv[0], kv[1], self.cache.k_cache, self.cache.v_cache,
                                                  ctx_md.slot_mapping[c0:c1], layout)
        self.md = build_metadata([c for c, _ in specs], [q for _, q in specs], tables, PAGE, "cuda")
        t = self.md.num_tokens
        self.q = torch.randn(t, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
        self.k = torch.randn(t, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        self.v = torch.randn(t, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        self.specs = specs

    def run(self, backend):
        import rocm_attn

        md = self.md
        return rocm_attn.attention(self.q, self.k, self.v, self.cache, md.query_start_loc, md.seq_lens,
                                   md.block_table, md.slot_mapping, scale=1.0 / math.sqrt(D), backend=backend,
                                   metadata=md)

    def flops(self) -> float:
        """Causal attention FLOPs: 4 * Hq * D per (query, visible key)."""
        visible = sum(q * c + q * (q + 1) / 2 for c, q in self.specs)
        return 4.0 * HQ * D * visible

    def kv_bytes(self) -> float:
        """K and V bytes a kernel must read at least once (every sequence's whole context + new)."""
        return sum(c + q for c, q in self.specs) * HKV * D * 2 * DTYPE.itemsize


def sdpa_prefill_ms(s: int) -> tuple[float, str]:
    """(ms, note): SDPA pinned to its flash backend (FlashAttention-2: the issues' "SDPA-flash"); the note
    also gives SDPA's default dispatch (cuDNN on an H100 with torch 2.11), the faster peer."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, HQ, s, D, device="cuda", dtype=DTYPE)
    k = torch.randn(1, HKV, s, D, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return sdpa()

    try:
        name = SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, True, enable_gqa=True)).name.lower()
    except Exception:
        name = "unknown"
    default_ms = bench(sdpa)[0]
    return bench(flash)[0], f"SDPA flash (default {name}: {default_ms:.3f} ms)"


def sdpa_decode_ms(batch: int, ctx: int) -> float:
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=DTYPE)
    k = torch.randn(batch, HKV, ctx, D, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)
    return bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))[0]


def sdpa_extend_ms(new: int, ctx: int) -> tuple[float, str]:
    q = torch.randn(1, HQ, new, D, device="cuda", dtype=DTYPE)
    k = torch.randn(1, HKV, ctx + new, D, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)
    try:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(new, ctx + new)
        return bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))[0], \
            "bottom-right causal"
    except Exception:
        return bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))[0], "non-causal (more work)"


# ---------------------------------------------------------------- cases

def cases(quick: bool):
    prefill = [("prefill", f"S={s // 1024}k", [(0, s)], s) for s in ([4096] if quick else [4096, 16384])]
    decode = [("decode", f"{b}x{c // 1024}k", [(c - 1, 1)] * b, (b, c))
              for b, c in ([(64, 4096), (16, 32768)] if quick else [(64, 4096), (256, 2048), (16, 32768)])]
    mixed = [("mixed", "64 dec(4k) + 2k prefill", [(4095, 1)] * 64 + [(0, 2048)], None),
             ("mixed", "64 dec(4k) + 512 prefill", [(4095, 1)] * 64 + [(0, 512)], None),
             ("mixed", "512 prefill + 64 dec(4k) (reordered)", [(0, 512)] + [(4095, 1)] * 64, None)]
    if not quick:
        mixed.append(("mixed", "8 ext(512 on 4k) + 32 dec(4k)", [(4096, 512)] * 8 + [(4095, 1)] * 32, None))
    seed = [("extend", "1 x 3616 new on 20000", [(20000, 3616)], (3616, 20000))]
    return prefill + decode + mixed + seed


def registered():
    import rocm_attn

    return rocm_attn.available_attention_backends()


def run_case(kind, name, specs, arg, copy_gbs, backends_info):
    rows = []
    base_ms, base_note = None, ""
    if kind == "prefill":
        base_ms, base_note = sdpa_prefill_ms(arg)
    elif kind == "decode":
        base_ms, base_note = sdpa_decode_ms(*arg), "SDPA contiguous K/V"
    elif kind == "extend":
        base_ms, base_note = sdpa_extend_ms(*arg)
        base_note = "SDPA " + base_note
    for layout in LAYOUTS:
        step = Step(specs, layout)
        flops, kv_bytes = step.flops(), step.kv_bytes()
        for backend in BACKENDS:
            info = backends_info.get(backend, {"registered": False})
            row = {"kind": kind, "case": name, "layout": layout, "backend": backend, "baseline": base_note,
                   "baseline_ms": base_ms}
            if not info["registered"]:
                row["note"] = "not registered"
            elif layout not in info["layouts"]:
                row["note"] = f"takes {'/'.join(info['layouts'])} only"
            else:
                try:
                    ms, how = bench(lambda: step.run(backend))
                except Exception as exc:  # a backend that cannot run this case: say why, keep going
                    row["note"] = f"error: {type(exc).__name__}: {str(exc)[:80]}"
                else:
                    row.update(ms=ms, timing=how, tflops=flops / ms / 1e9, kv_gbs=kv_bytes / ms / 1e6)
                    row["pct_copy"] = 100.0 * row["kv_gbs"] / copy_gbs
                    if base_ms:
                        row["vs_baseline"] = base_ms / ms
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        del step
        torch.cuda.empty_cache()
    return rows


def markdown(rows, copy_gbs, device):
    lines = [f"device: {device}; d2d copy {copy_gbs:.0f} GB/s; GQA {HQ}/{HKV}, D={D}, bf16, page {PAGE}; "
             "x = baseline time / ours (> 1: faster)", "",
             "| case | layout | backend | ms | timing | TFLOP/s | K/V GB/s (% copy) | baseline | baseline ms "
             "| x |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['kind']} {r['case']} | {r['layout']} | {r['backend']} | {r['note']} "
                         "| | | | | | |")
            continue
        base = f"{r['baseline_ms']:.3f}" if r.get("baseline_ms") else "-"
        x = f"{r['vs_baseline']:.2f}" if "vs_baseline" in r else "-"
        lines.append(f"| {r['kind']} {r['case']} | {r['layout']} | {r['backend']} | {r['ms']:.3f} "
                     f"| {r['timing']} | {r['tflops']:.0f} | {r['kv_gbs']:.0f} ({r['pct_copy']:.0f}%) "
                     f"| {r['baseline'] or '-'} | {base} | {x} |")
    return "\n".join(lines)


def mix_ratios(rows) -> list[dict]:
    """Issue 4, per mixed case: TRITON_ATTN ms / ROCM_AITER_FA ms (shuffled), with TRITON_ATTN on each
    layout (> 1: the split backend is faster; target >= 1.15)."""
    ms = {(r["case"], r["layout"], r["backend"]): r["ms"] for r in rows if r["kind"] == "mixed" and "ms" in r}
    out = []
    for case in dict.fromkeys(r["case"] for r in rows if r["kind"] == "mixed"):
        fa = ms.get((case, "shuffled", "ROCM_AITER_FA"))
        rocm_attn = ms.get((case, "standard", "ROCM_ATTN"))
        ratio = {"case": case, "rocm_aiter_fa_ms": fa, "rocm_attn_ms": rocm_attn}
        for layout in LAYOUTS:
            triton = ms.get((case, layout, "TRITON_ATTN"))
            ratio[f"x_vs_triton_{layout}"] = triton / fa if fa and triton else None
        out.append(ratio)
    return out


def ratio_markdown(ratios) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    lines = ["", "issue 4: TRITON_ATTN ms / ROCM_AITER_FA ms (target >= 1.15)", "",
             "| mix | ROCM_AITER_FA ms | x vs TRITON_ATTN standard | x vs TRITON_ATTN shuffled "
             "| ROCM_ATTN ms |",
             "|---|---|---|---|---|"]
    for r in ratios:
        fa = "-" if r["rocm_aiter_fa_ms"] is None else f"{r['rocm_aiter_fa_ms']:.3f}"
        ra = "-" if r["rocm_attn_ms"] is None else f"{r['rocm_attn_ms']:.3f}"
        lines.append(f"| {r['case']} | {fa} | {f(r['x_vs_triton_standard'])} "
                     f"| {f(r['x_vs_triton_shuffled'])} | {ra} |")
    return "\n".join(lines)


def tune():
    """Sweep the unified kernel's block sizes on the two target shapes (kernel only, standard layout)."""
    from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch

    scale = 1.0 / math.sqrt(D)
    shapes = {"prefill 4k": [(0, 4096)], "decode 64x4k": [(4095, 1)] * 64, "decode 16x32k": [(32767, 1)] * 16}
    grid = {"prefill 4k": [dict(BLOCK_M=m, TILE=n, num_warps=w, num_stages=s) for m in (64, 128)
                           for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)],
            "decode": [dict(TILE=n, num_warps=w, num_stages=s, NUM_SEGMENTS=g) for n in (32, 64, 128)
                       for w in (2, 4, 8) for s in (2, 3, 4) for g in (1, 4, 8, 16)]}
    copy_gbs = copy_bandwidth_gbs()
    for name, specs in shapes.items():
        for layout in LAYOUTS:
            step = Step(specs, layout)
            md, kc, vc = step.md, step.cache.k_cache, step.cache.v_cache
            results = []
            for cfg in grid["prefill 4k" if name.startswith("prefill") else "decode"]:
                def fn(cfg=cfg):
                    return unified_attention_launch(step.q, kc, vc, md.query_start_loc, md.seq_lens, md.block_table,
                                                    scale, layout, 0, 0.0, md.max_query_len, md.max_seq_len,
                                                    config=cfg)
                try:
                    ms, _ = bench(fn)
                except Exception as exc:
                    print(f"  {cfg}: {type(exc).__name__}", flush=True)
                    continue
                results.append((ms, cfg))
            results.sort(key=lambda r: r[0])
            default_ms, _ = bench(lambda: unified_attention_launch(
                step.q, kc, vc, md.query_start_loc, md.seq_lens, md.block_table, scale, layout, 0, 0.0,
                md.max_query_len, md.max_seq_len))
            print(f"{name} {layout}: default {default_ms:.3f} ms ({step.flops() / default_ms / 1e9:.0f} TFLOP/s, "
                  f"{100 * step.kv_bytes() / default_ms / 1e6 / copy_gbs:.0f}% copy)")
            for ms, cfg in results[:5]:
                print(f"   {ms:.3f} ms  {step.flops() / ms / 1e9:.0f} TFLOP/s  "
                      f"{100 * step.kv_bytes() / ms / 1e6 / copy_gbs:.0f}% copy  {cfg}", flush=True)
            del step
            torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_attention.json", help="JSON results path")
    ap.add_argument("--quick", action="store_true", help="a subset that runs in < 90 s")
    ap.add_argument("--mixes", action="store_true", help="only the mixed-batch cases (issue 4 ratio)")
    ap.add_argument("--tune", action="store_true", help="sweep the unified kernel's configs instead")
    args, _ = ap.parse_known_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA/ROCm GPU")
    import rocm_attn  # noqa: F401  (registers the ops and backends)

    torch.manual_seed(0)
    if args.tune:
        tune()
        return
    start = time.time()
    copy_gbs = copy_bandwidth_gbs()
    info = registered()
    rows = []
    for kind, name, specs, arg in cases(args.quick):
        if args.mixes and kind != "mixed":
            continue
        rows += run_case(kind, name, specs, arg, copy_gbs, info)
    device = torch.cuda.get_device_name(0)
    ratios = mix_ratios(rows)
    table = markdown(rows, copy_gbs, device) + "\n" + ratio_markdown(ratios)
    print(table)
    flags = "".join(f" --{name}" for name in ("quick", "mixes") if getattr(args, name))
    result = {"device": device, "torch": torch.__version__, "copy_gbs": copy_gbs, "rows": rows,
              "mix_ratios": ratios, "backends": info, "seconds": time.time() - start,
              "command": "python benchmarks/bench_attention.py" + flags}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
