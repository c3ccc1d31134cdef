"""Tune the Triton prefill kernels against SDPA on one GPU (< 3 min on an H100).

    python benchmarks/tune_prefill.py --out results/tune_prefill.json
    python benchmarks/tune_prefill.py --quick --out results/tune_prefill.json   # S = 4k only

GQA 32/8, D = 128, bf16, causal, page 16. Cases: one sequence of S = 4k, 8k, 16k and a batch of
4 x 4k. Kernels: flash_attn_varlen (kernels/triton_kernels/flash_attention.py, packed q/k/v) and the
unified kernel on a prefill-only batch reading K/V from the paged cache (standard and shuffled
layouts, pages in random order). Each candidate config is first checked against
F.scaled_dot_product_attention (rel err < 2e-2, else WRONG and not timed), then timed with
triton.testing.do_bench (median). Prints every candidate, then the best per case with its ratios vs
SDPA; writes all rows to --out. Paste the winners back as the kernels' defaults.

SDPA baselines: the default dispatch (whichever backend torch picks; named in the row) and each
backend pinned with sdpa_kernel: flash (FlashAttention-2, the issues' "SDPA-flash"), cuDNN and
memory-efficient. Backends that refuse enable_gqa get K/V expanded to 32 heads beforehand (untimed).
`x SDPA` is against the default, `x flash` against the pinned flash backend.
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

# flash: (BLOCK_M, BLOCK_N, num_warps, num_stages)
FLASH_CONFIGS = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3),
                 (128, 32, 8, 4)]
# unified: (BLOCK_M = query tokens x 4 heads, TILE, num_warps, num_stages)
UNIFIED_CONFIGS = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 32, 8, 4), (64, 64, 4, 3),
                   (128, 64, 4, 3)]


def timed(fn) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median"))


def shuffle_cache(k_std, v_std):
    """standard [nb, PAGE, Hkv, D] -> k [nb, Hkv, D//x, PAGE, x], v [nb, Hkv, PAGE//x, D, x] (x = 8 for bf16)."""
    nb = k_std.shape[0]
    x = 16 // k_std.element_size()
    k = k_std.view(nb, PAGE, HKV, D // x, x).permute(0, 2, 3, 1, 4).contiguous()
    v = v_std.view(nb, PAGE // x, x, HKV, D).permute(0, 3, 1, 4, 2).contiguous()
    return k, v


class Case:
    def __init__(self, batch, seq, seed=0):
        self.name = f"{batch}x{seq // 1024}k" if batch > 1 else f"S={seq // 1024}k"
        self.batch, self.seq = batch, seq
        gen = torch.Generator(device="cuda").manual_seed(seed)
        T = batch * seq
        self.q = torch.randn(T, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
        self.k = torch.randn(T, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        self.v = torch.randn(T, HKV, D, device="cuda", dtype=DTYPE, generator=gen)
        self.cu = torch.arange(0, T + 1, seq, device="cuda", dtype=torch.int32)
        self.seq_lens = torch.full((batch,), seq, device="cuda", dtype=torch.int32)
        self.scale = D ** -0.5
        # paged cache, pages in random order (like a real engine)
        pages_per_seq = seq // PAGE
        nb = batch * pages_per_seq
        perm = torch.randperm(nb, device="cuda", generator=gen)
        self.block_table = perm.view(batch, pages_per_seq).to(torch.int32).contiguous()
        k_std = torch.empty(nb, PAGE, HKV, D, device="cuda", dtype=DTYPE)
        v_std = torch.empty_like(k_std)
        k_std[perm] = self.k.view(nb, PAGE, HKV, D)
        v_std[perm] = self.v.view(nb, PAGE, HKV, D)
        self.caches = {"standard": (k_std, v_std), "shuffled": shuffle_cache(k_std, v_std)}
        # SDPA layout [B, H, S, D]
        self.q4 = self.q.view(batch, seq, HQ, D).transpose(1, 2)
        self.k4 = self.k.view(batch, seq, HKV, D).transpose(1, 2)
        self.v4 = self.v.view(batch, seq, HKV, D).transpose(1, 2)
        self.flops = 4 * batch * HQ * D * seq * seq / 2  # two matmuls, causal half

    def sdpa(self):
        return F.scaled_dot_product_attention(self.q4, self.k4, self.v4, is_causal=True, enable_gqa=True)

    def sdpa_pinned(self, backend):
        """A callable running SDPA on one pinned backend, or None where that backend refuses the case."""
        from torch.nn.attention import sdpa_kernel

        expanded = (self.k4.repeat_interleave(HQ // HKV, 1), self.v4.repeat_interleave(HQ // HKV, 1))
        for k, v, gqa in ((self.k4, self.v4, True), (*expanded, False)):
            def run(k=k, v=v, gqa=gqa):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(self.q4, k, v, is_causal=True, enable_gqa=gqa)
            try:
                run()
                return run
            except RuntimeError:
                continue
        return None

    def sdpa_default_name(self) -> str:
        """The backend SDPA's default dispatch picks here (torch._fused_sdp_choice), or "unknown"."""
        from torch.nn.attention import SDPBackend

        try:
            choice = torch._fused_sdp_choice(self.q4, self.k4, self.v4, None, 0.0, True, enable_gqa=True)
            return SDPBackend(choice).name.lower()
        except Exception:
            return "unknown"

    def flash(self, cfg):
        from rocm_attn.kernels.triton_kernels.flash_attention import flash_attn_varlen_launch
        return flash_attn_varlen_launch(self.q, self.k, self.v, self.cu, self.cu, self.seq, self.seq, self.scale,
                                        True, config=cfg)[0]

    def unified(self, layout, cfg):
        from rocm_attn.kernels.triton_kernels.unified_attention import unified_attention_launch
        k_cache, v_cache = self.caches[layout]
        over = None
        if cfg is not None:
            bm, tile, warps, stages = cfg
            over = dict(BLOCK_M=bm, TILE=tile, num_warps=warps, num_stages=stages, NUM_SEGMENTS=1)
        return unified_attention_launch(self.q, k_cache, v_cache, self.cu, self.seq_lens, self.block_table,
                                        self.scale, layout, 0, 0.0, self.seq, self.seq, config=over)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tune_prefill.json")
    ap.add_argument("--quick", action="store_true", help="S = 4k only")
    args = ap.parse_args()
    from rocm_attn.testing import rel_err

    torch.manual_seed(0)
    shapes = [(1, 4096)] if args.quick else [(1, 4096), (1, 8192), (1, 16384), (4, 4096)]
    rows, t0 = [], time.time()
    print(f"device: {torch.cuda.get_device_name()}; GQA {HQ}/{HKV}, D={D}, bf16, causal, page {PAGE}", flush=True)
    for batch, seq in shapes:
        case = Case(batch, seq)
        ref = case.sdpa().transpose(1, 2).reshape(batch * seq, HQ, D)  # [T, H, D]
        sdpa_ms = timed(case.sdpa)
        rows.append(dict(case=case.name, kernel="sdpa", config=case.sdpa_default_name(), ms=sdpa_ms,
                         tflops=case.flops / sdpa_ms / 1e9, vs_sdpa=1.0))
        print(f"{case.name:7s} {'sdpa':18s} {rows[-1]['config']:20s} {sdpa_ms:8.3f} ms "
              f"{case.flops / sdpa_ms / 1e9:6.0f} TFLOP/s", flush=True)
        from torch.nn.attention import SDPBackend

        flash_ms = None
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            fn = case.sdpa_pinned(backend)
            name = f"sdpa[{backend.name.lower()}]"
            if fn is None:
                rows.append(dict(case=case.name, kernel=name, config=None, status="refuses this case"))
                print(f"{case.name:7s} {name:18s} refuses this case", flush=True)
                continue
            ms = timed(fn)
            flash_ms = ms if backend == SDPBackend.FLASH_ATTENTION else flash_ms
            rows.append(dict(case=case.name, kernel=name, config=None, ms=ms, tflops=case.flops / ms / 1e9,
                             vs_sdpa=sdpa_ms / ms, rel_err=rel_err(fn().transpose(1, 2).reshape_as(ref), ref)))
            print(f"{case.name:7s} {name:18s} {'':20s} {ms:8.3f} ms {case.flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
        runs = [("flash", c, (lambda c=c: case.flash(c))) for c in [None] + FLASH_CONFIGS]
        for layout in ("standard", "shuffled"):
            runs += [(f"unified/{layout}", c, (lambda c=c, l=layout: case.unified(l, c)))
                     for c in [None] + UNIFIED_CONFIGS]
        for kernel, cfg, fn in runs:
            label = "default" if cfg is None else str(cfg)
            row = dict(case=case.name, kernel=kernel, config=cfg)
            try:
                err = rel_err(fn(), ref)
                row["rel_err"] = err
                if not err < TOL:
                    row["status"] = "WRONG"
                else:
                    ms = timed(fn)
                    row.update(status="ok", ms=ms, tflops=case.flops / ms / 1e9, vs_sdpa=sdpa_ms / ms,
                               vs_sdpa_flash=flash_ms / ms if flash_ms else None)
            except Exception as e:  # out of shared memory, compile error: the candidate just loses
                row.update(status="FAILED", error=f"{type(e).__name__}: {str(e)[:160]}")
            rows.append(row)
            if row["status"] == "ok":
                print(f"{case.name:7s} {kernel:18s} {label:20s} {row['ms']:8.3f} ms {row['tflops']:6.0f} TFLOP/s "
                      f"x{row['vs_sdpa']:.2f}  err {row['rel_err']:.1e}", flush=True)
            else:
                print(f"{case.name:7s} {kernel:18s} {label:20s} {row['status']} {row.get('rel_err', '')} "
                      f"{row.get('error', '')}", flush=True)
        del case
        torch.cuda.empty_cache()

    print("\nbest per case (x = SDPA ms / ours; targets vs SDPA-flash: flash >= 0.9, unified >= 0.8)")
    print("| case | kernel | best config | ms | TFLOP/s | x SDPA (default) | x flash | default config x SDPA |")
    print("|---|---|---|---|---|---|---|---|")
    best = []
    for name in dict.fromkeys(r["case"] for r in rows):
        for kernel in ("flash", "unified/standard", "unified/shuffled"):
            ok = [r for r in rows if r["case"] == name and r["kernel"] == kernel and r.get("status") == "ok"]
            if not ok:
                print(f"| {name} | {kernel} | none passed | | | | |")
                continue
            b = max(ok, key=lambda r: r["tflops"])
            dflt = next((r for r in ok if r["config"] is None), None)
            best.append(dict(case=name, kernel=kernel, config=b["config"], ms=b["ms"], vs_sdpa=b["vs_sdpa"],
                             vs_sdpa_flash=b["vs_sdpa_flash"]))
            dflt_x = f"{dflt['vs_sdpa']:.2f}" if dflt else "-"
            flash_x = f"{b['vs_sdpa_flash']:.2f}" if b["vs_sdpa_flash"] else "-"
            print(f"| {name} | {kernel} | {b['config'] or 'default'} | {b['ms']:.3f} | {b['tflops']:.0f} | "
                  f"{b['vs_sdpa']:.2f} | {flash_x} | {dflt_x} |")
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows, best=best,
                       command="python benchmarks/tune_prefill.py --out " + args.out), f, indent=1)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
