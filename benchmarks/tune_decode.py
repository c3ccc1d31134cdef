"""Tune the paged decode kernel against SDPA on one GPU (< 3 min on an H100).

    python benchmarks/tune_decode.py --out results/tune_decode.json
    python benchmarks/tune_decode.py --quick --out results/tune_decode.json   # 64 x 4k only
    python benchmarks/tune_decode.py --unified-grid --out results/tune_unified_decode.json

GQA 32/8, D = 128, bf16, page 16, one query per sequence. Cases (batch x context): 64 x 4k,
256 x 2k, 16 x 32k. Kernels:
- paged_decode (kernels/triton_kernels/paged_decode.py) on the standard and the shuffled layout
  (pages in random order): phase 1 sweeps the split count with the default config, phase 2 the
  configs (BLOCK_N, num_warps, num_stages) at the automatic split count and at phase 1's best;
- "unified": unified_attention_launch on the same decode-only batch (routes to paged_decode), and
  "unified-kernel": the unified kernel itself (config forced to pick_config's choice), for reference;
- SDPA on contiguous K/V [B, Hkv, S, D] (the baseline and the correctness reference).
Every candidate is first checked against SDPA's output (rel err < 2e-2, else WRONG, not timed),
then timed by CUDA-graph replay (do_bench_cudagraph median; do_bench when capture fails).
Prints every row, then the best per (case, kernel, layout) with its K/V bandwidth, % of the measured
copy bandwidth and ratio vs SDPA (x > 1: faster than SDPA); writes all rows to --out.
Paste the winners back into DEFAULT_CONFIG / choose_num_splits of paged_decode.py.
--unified-grid instead sweeps the unified kernel's decode configs on the shuffled layout, where it is the
decode route (TILE x warps x stages x segments around pick_config's count); winners go into pick_config.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
TOL = 2e-2
CASES = [(64, 4096), (256, 2048), (16, 32768)]
SPLITS = [1, 2, 4, 8, 16, 32]
# (BLOCK_N, num_warps, num_stages); the first is the default
CONFIGS = [(64, 4, 3), (64, 4, 2), (32, 4, 3), (128, 4, 3), (64, 8, 3), (128, 8, 3), (32, 2, 3)]


def bench(fn) -> tuple[float, str]:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")), "graph"
    except Exception:
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median")), "eager"


def copy_bandwidth_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms, _ = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * (1 << 30) / ms / 1e6  # read + write


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


class Case:
    """B sequences of S tokens each in both cache layouts (pages in random order) + contiguous K/V."""

    def __init__(self, batch: int, ctx: int, seed: int = 0):
        self.name = f"{batch}x{ctx // 1024}k"
        self.batch, self.ctx = batch, ctx
        gen = torch.Generator(device="cuda").manual_seed(seed)
        pages = ctx // PAGE
        nb = batch * pages
        self.q = torch.randn(batch, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
        k_std = torch.randn(nb, PAGE, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        v_std = torch.randn(nb, PAGE, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        perm = torch.randperm(nb, device="cuda", generator=gen)
        self.block_table = perm.view(batch, pages).to(torch.int32).contiguous()
        # sequence b, page p lives in cache block block_table[b, p]: contiguous K/V for SDPA [B, Hkv, S, D]
        self.k4 = k_std[perm].view(batch, ctx, HKV, D).transpose(1, 2).contiguous()
        self.v4 = v_std[perm].view(batch, ctx, HKV, D).transpose(1, 2).contiguous()
        x = 16 // k_std.element_size()
        k_shuf = k_std.view(nb, PAGE, HKV, D // x, x).permute(0, 2, 3, 1, 4).contiguous()
        v_shuf = v_std.view(nb, PAGE // x, x, HKV, D).permute(0, 3, 1, 4, 2).contiguous()
        self.caches = {"standard": (k_std, v_std), "shuffled": (k_shuf, v_shuf)}
        self.seq_lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
        self.qsl = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
        self.scale = D ** -0.5
        self.kv_bytes = 2 * batch * ctx * HKV * D * k_std.element_size()
        self.ref = self.sdpa().squeeze(2).float()

    def sdpa(self):
        return F.scaled_dot_product_attention(self.q.unsqueeze(2), self.k4, self.v4, scale=self.scale,
                                              enable_gqa=True)


def run_candidate(case: Case, rows: list, kernel: str, layout: str, label: str, fn, sdpa_ms: float,
                  copy_gbs: float, **extra) -> float | None:
    row = dict(case=case.name, kernel=kernel, layout=layout, config=label, **extra)
    try:
        out = fn()
        torch.cuda.synchronize()
        err = rel_err(out.float(), case.ref)
    except Exception as exc:  # a config that does not compile / launch: report and go on
        row.update(status=f"ERROR {type(exc).__name__}: {str(exc)[:120]}")
        print(f"{case.name:8} {kernel:15} {layout:9} {label:28} {row['status']}")
        rows.append(row)
        return None
    row["rel_err"] = err
    if not err < TOL:
        row["status"] = "WRONG"
        print(f"{case.name:8} {kernel:15} {layout:9} {label:28} WRONG rel_err={err:.3g}")
        rows.append(row)
        return None
    ms, how = bench(fn)
    gbs = case.kv_bytes / ms / 1e6
    row.update(status="ok", ms=ms, timing=how, kv_gbs=gbs, pct_copy=100 * gbs / copy_gbs, vs_sdpa=sdpa_ms / ms)
    print(f"{case.name:8} {kernel:15} {layout:9} {label:28} {ms:7.4f} ms {gbs:6.0f} GB/s "
          f"{row['pct_copy']:5.1f}% copy  x{row['vs_sdpa']:.2f} SDPA  err {err:.1e}")
    rows.append(row)
    return ms


def sdpa_row(case: Case, rows: list, copy_gbs: float) -> float:
    """Time SDPA on the contiguous K/V (the baseline), add its row; returns its ms."""
    sdpa_ms, how = bench(case.sdpa)
    gbs = case.kv_bytes / sdpa_ms / 1e6
    rows.append(dict(case=case.name, kernel="SDPA", layout="contiguous", config="", status="ok", ms=sdpa_ms,
                     timing=how, kv_gbs=gbs, pct_copy=100 * gbs / copy_gbs, vs_sdpa=1.0))
    print(f"{case.name:8} {'SDPA':15} {'contig':9} {'':28} {sdpa_ms:7.4f} ms {gbs:6.0f} GB/s "
          f"{100 * gbs / copy_gbs:5.1f}% copy")
    return sdpa_ms


def unified_runner(case: Case, layout: str):
    """config -> a callable running the unified launcher on the case's decode batch in ``layout``."""
    from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch

    kc, vc = case.caches[layout]

    def unified(config):
        return lambda: unified_attention_launch(case.q, kc, vc, case.qsl, case.seq_lens, case.block_table,
                                                case.scale, layout, 0, 0.0, 1, case.ctx, config=config)
    return unified


def tune_case(case: Case, rows: list, copy_gbs: float) -> None:
    from rocm_attn.kernels.triton_kernels.paged_decode import choose_num_splits, paged_decode_launch
    from rocm_attn.kernels.triton_kernels.unified_attention import pick_config

    sdpa_ms = sdpa_row(case, rows, copy_gbs)
    auto = choose_num_splits(case.batch, HKV, case.ctx, torch.device("cuda"))
    for layout, (kc, vc) in case.caches.items():
        def decode(splits, cfg):
            return lambda: paged_decode_launch(case.q, kc, vc, case.seq_lens, case.block_table, case.scale, layout,
                                               0, 0.0, num_splits=splits, config=cfg)

        # phase 1: split count, default config
        block_n, warps, stages = CONFIGS[0]
        cfg0 = dict(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        best_split, best_ms = auto, None
        for splits in sorted(set(SPLITS + [auto])):
            if splits > 1 and (case.ctx // splits < 256 or case.batch * HKV * splits > 8192):
                continue
            ms = run_candidate(case, rows, "paged_decode", layout, f"BN{block_n} w{warps} s{stages} sp{splits}"
                               + (" (auto)" if splits == auto else ""), decode(splits, cfg0), sdpa_ms, copy_gbs,
                               splits=splits, auto_splits=auto, **cfg0)
            if ms is not None and (best_ms is None or ms < best_ms):
                best_split, best_ms = splits, ms
        # phase 2: configs at the automatic split count and at phase 1's best
        for block_n, warps, stages in CONFIGS[1:]:
            cfg = dict(BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            for splits in sorted({auto, best_split}):
                run_candidate(case, rows, "paged_decode", layout, f"BN{block_n} w{warps} s{stages} sp{splits}",
                              decode(splits, cfg), sdpa_ms, copy_gbs, splits=splits, auto_splits=auto, **cfg)
        # the unified entry (routes decode-only batches to paged_decode) and the unified kernel itself
        unified = unified_runner(case, layout)

        run_candidate(case, rows, "unified", layout, "default (-> paged_decode)", unified(None), sdpa_ms, copy_gbs)
        try:
            own = pick_config(case.batch, HKV, HQ // HKV, D, 1, case.ctx, torch.device("cuda"))
        except Exception as exc:  # the prefill work may change pick_config: the unified kernel is only a reference
            print(f"unified-kernel skipped: pick_config failed ({exc})")
            continue
        run_candidate(case, rows, "unified-kernel", layout, f"TILE{own['TILE']} seg{own['NUM_SEGMENTS']}",
                      unified(own), sdpa_ms, copy_gbs)
        for segments in (1, 4, 16):
            if segments != own["NUM_SEGMENTS"]:
                cfg = dict(own, NUM_SEGMENTS=segments)
                run_candidate(case, rows, "unified-kernel", layout, f"TILE{own['TILE']} seg{segments}",
                              unified(cfg), sdpa_ms, copy_gbs)


# (TILE, warps, stages): session 6 found 32-key tiles / 4 warps / 2 stages best and 128-key tiles or 8 warps
# always worse, so the grid looks around that point
UNIFIED_GRID = [(tile, warps, stages) for tile in (16, 32, 64) for warps in (2, 4) for stages in (2, 3, 4)]


def tune_unified_grid(case: Case, rows: list, copy_gbs: float) -> None:
    """The unified kernel on the shuffled layout: pick_config's choice, then UNIFIED_GRID at its segment
    count and at half / twice it."""
    from rocm_attn.kernels.triton_kernels.unified_attention import pick_config

    sdpa_ms = sdpa_row(case, rows, copy_gbs)
    unified = unified_runner(case, "shuffled")
    own = pick_config(case.batch, HKV, HQ // HKV, D, 1, case.ctx, torch.device("cuda"))
    run_candidate(case, rows, "unified-kernel", "shuffled",
                  f"TILE{own['TILE']} w{own['num_warps']} s{own['num_stages']} seg{own['NUM_SEGMENTS']} (auto)",
                  unified(own), sdpa_ms, copy_gbs)
    seg0 = own["NUM_SEGMENTS"]
    for tile, warps, stages in UNIFIED_GRID:
        for segments in sorted({max(1, seg0 // 2), seg0, min(32, seg0 * 2)}):
            cfg = dict(own, TILE=tile, num_warps=warps, num_stages=stages, NUM_SEGMENTS=segments)
            if cfg == own:
                continue
            run_candidate(case, rows, "unified-kernel", "shuffled", f"TILE{tile} w{warps} s{stages} seg{segments}",
                          unified(cfg), sdpa_ms, copy_gbs)


def summary(rows: list, copy_gbs: float) -> None:
    print(f"\nbest per case (copy {copy_gbs:.0f} GB/s measured; targets: >= 85% copy and >= 0.9x SDPA)")
    print("| case | kernel | layout | config | ms | K/V GB/s | % copy | x SDPA |")
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        key = (r["case"], r["kernel"], r["layout"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    for r in best.values():
        print(f"| {r['case']} | {r['kernel']} | {r['layout']} | {r['config']} | {r['ms']:.4f} | {r['kv_gbs']:.0f} "
              f"| {r['pct_copy']:.1f} | {r['vs_sdpa']:.2f} |")
    for r in rows:
        if r.get("status") not in ("ok", None):
            print(f"NOT OK: {r['case']} {r['kernel']} {r['layout']} {r['config']}: {r['status']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tune_decode.json")
    ap.add_argument("--quick", action="store_true", help="64 x 4k only")
    ap.add_argument("--unified-grid", action="store_true",
                    help="sweep the unified kernel's decode configs on the shuffled layout instead")
    args = ap.parse_args(argv)
    import triton

    t0 = time.time()
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth_gbs()
    device = torch.cuda.get_device_name()
    print(f"{device}; torch {torch.__version__}, triton {triton.__version__}; copy {copy_gbs:.0f} GB/s; "
          f"GQA {HQ}/{HKV}, D={D}, bf16, page {PAGE}")
    rows = []
    for batch, ctx in CASES[:1] if args.quick else CASES:
        case = Case(batch, ctx)
        (tune_unified_grid if args.unified_grid else tune_case)(case, rows, copy_gbs)
        del case
        torch.cuda.empty_cache()
    summary(rows, copy_gbs)
    with open(args.out, "w") as f:
        json.dump(dict(device=device, copy_gbs=copy_gbs, seconds=time.time() - t0, rows=rows), f, indent=1)
    print(f"\n{len(rows)} rows -> {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
