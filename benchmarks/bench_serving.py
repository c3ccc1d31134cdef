"""Mixed-batch serving steps through rocm_attn.attention(), per attention backend and KV layout.

    python benchmarks/bench_serving.py --out results/bench_serving.json # GPU, Llama-3.1-8B attention shapes
    python benchmarks/bench_serving.py --cpu-smoke --out /tmp/serving.json  # tiny shapes, CPU torch providers

One engine step = one layer's attention over a batch that mixes decodes (1 new token on a context),
extends (new tokens on a cached context) and prefills (no context), token-packed with paged K/V: what a
continuous-batching server runs per layer per step. Mixes:
  decode-heavy    60 decodes on 2k + 2 extends (256 on 1k) + 1 prefill chunk of 512
  prefill-heavy   4 prefills of 2k + 2 extends (1k on 2k) + 8 decodes on 2k
Per (mix, backend, layout): step time (median; CUDA-graph replay on a GPU where it captures), new tokens/s
for one layer, and x sdpa_loop: the same step done the way an engine without paged attention would, one
F.scaled_dot_product_attention call per sequence on contiguous K/V (> 1: ours faster). Each step includes
writing the new k/v into the cache. Metadata is built once per step (engines reuse it for every layer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

# (name, [(context_len, query_len), ...]) per sequence
MIXES = {
    "decode-heavy": [(2047, 1)] * 60 + [(1024, 256)] * 2 + [(0, 512)],
    "prefill-heavy": [(0, 2048)] * 4 + [(2048, 1024)] * 2 + [(2047, 1)] * 8,
}
SMOKE_MIXES = {
    "decode-heavy": [(31, 1)] * 6 + [(16, 8)] + [(0, 16)],
    "prefill-heavy": [(0, 32)] * 2 + [(32, 16)] + [(31, 1)] * 2,
}
SHAPE = dict(hq=32, hkv=8, d=128, page=16)  # Llama-3.1-8B attention
SMOKE_SHAPE = dict(hq=4, hkv=2, d=32, page=16)
DTYPE = torch.bfloat16


class Step:
    """One step's paged batch: the contexts already in the cache, the new tokens' q/k/v, the metadata."""

    def __init__(self, specs, layout, shape, device, seed=0):
        from rocm_attn.kernels.attention_metadata import build_metadata
        from rocm_attn.kernels.kv_cache import KVCache

        hkv, d, page = shape["hkv"], shape["d"], shape["page"]
        gen = torch.Generator(device=device).manual_seed(seed)
        need = [-(-(c + q) // page) for c, q in specs]
        self.cache = KVCache(sum(need) + 1, page, hkv, d, DTYPE, layout, device)
        perm = torch.randperm(sum(need) + 1).tolist()  # scattered pages, as in a running server
        tables, i = [], 0
        for n in need:
            tables.append(perm[i : i + n])
            i += n
        ctx = build_metadata([0] * len(specs), [c for c, _ in specs], tables, page, device)
        self.ctx_k = torch.randn(ctx.num_tokens, hkv, d, device=device, dtype=DTYPE, generator=gen)
        self.ctx_v = torch.randn(ctx.num_tokens, hkv, d, device=device, dtype=DTYPE, generator=gen)
        torch.ops.rocm_attn.reshape_and_cache(
            self.ctx_k, self.ctx_v, self.cache.k_cache, self.cache.v_cache, ctx.slot_mapping, layout
        )
        self.md = build_metadata([c for c, _ in specs], [q for _, q in specs], tables, page, device)
        t = self.md.num_tokens
        self.q = torch.randn(t, shape["hq"], d, device=device, dtype=DTYPE, generator=gen)
        self.k = torch.randn(t, hkv, d, device=device, dtype=DTYPE, generator=gen)
        self.v = torch.randn(t, hkv, d, device=device, dtype=DTYPE, generator=gen)
        self.specs, self.scale = specs, 1.0 / math.sqrt(d)

    def run(self, backend):
        import rocm_attn

        md = self.md
        return rocm_attn.attention(
            self.q,
            self.k,
            self.v,
            self.cache,
            md.query_start_loc,
            md.seq_lens,
            md.block_table,
            md.slot_mapping,
            scale=self.scale,
            backend=backend,
            metadata=md,
        )

    def sdpa_loop(self):
        """The same step without paged attention: per sequence, SDPA over its contiguous context + new k/v."""
        outs, ctx0, new0 = [], 0, 0
        for c, q in self.specs:
            k = torch.cat([self.ctx_k[ctx0 : ctx0 + c], self.k[new0 : new0 + q]]).transpose(0, 1)[None]
            v = torch.cat([self.ctx_v[ctx0 : ctx0 + c], self.v[new0 : new0 + q]]).transpose(0, 1)[None]
            qs = self.q[new0 : new0 + q].transpose(0, 1)[None]
            # causal, bottom-right aligned: query i sees keys 0 .. c + i
            mask = torch.ones(q, c + q, dtype=torch.bool, device=qs.device).tril(diagonal=c)
            outs.append(
                F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=self.scale, enable_gqa=True)[
                    0
                ].transpose(0, 1)
            )
            ctx0, new0 = ctx0 + c, new0 + q
        return torch.cat(outs)


def bench_ms(fn, device: str, iters: int) -> tuple[float, str]:
    """(median ms, timing method): CUDA-graph replay where it captures, else do_bench; CPU: wall clock."""
    fn()
    if device == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median")), "graph"
        except Exception:
            torch.cuda.synchronize()
            return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")), "eager"
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3, "wall"


def run_mix(name, specs, shape, device, iters) -> list[dict]:
    import rocm_attn

    info = rocm_attn.available_attention_backends()
    new_tokens = sum(q for _, q in specs)
    counts = {
        "decodes": sum(q == 1 and c > 0 for c, q in specs),
        "extends": sum(q > 1 and c > 0 for c, q in specs),
        "prefills": sum(c == 0 for c, _ in specs),
    }
    base = {"mix": name, "sequences": len(specs), "new_tokens": new_tokens, **counts}
    step = Step(specs, "standard", shape, device)
    ref = step.sdpa_loop()
    ref_ms, how = bench_ms(step.sdpa_loop, device, iters)
    rows = [
        {
            **base,
            "backend": "sdpa_loop",
            "layout": "contiguous",
            "ms": ref_ms,
            "timing": how,
            "tokens_per_s": new_tokens / ref_ms * 1e3,
            "x_sdpa_loop": 1.0,
        }
    ]
    for layout in ("standard", "shuffled"):
        step = Step(specs, layout, shape, device)
        for backend, b in info.items():
            row = {**base, "backend": backend, "layout": layout}
            if not b["registered"]:
                row["note"] = "not registered"
            elif layout not in b["layouts"]:
                row["note"] = f"takes {'/'.join(b['layouts'])} only"
            else:
                try:
                    err = (step.run(backend).float() - ref.float()).abs().max().item()
                    ms, how = bench_ms(lambda s=step, b=backend: s.run(b), device, iters)
                except Exception as exc:  # a backend that cannot run this mix: say why, keep going
                    row["note"] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
                else:
                    row.update(
                        ms=ms,
                        timing=how,
                        tokens_per_s=new_tokens / ms * 1e3,
                        x_sdpa_loop=ref_ms / ms,
                        max_abs_err_vs_sdpa=err,
                    )
            rows.append(row)
            print(
                json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                flush=True,
            )
    return rows


def markdown(rows) -> str:
    lines = [
        "| mix | backend | layout | step ms | new tokens/s (1 layer) | x sdpa_loop | max abs err | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['mix']} | {r['backend']} | {r['layout']} | - | - | - | - | {r['note']} |")
            continue
        err = f"{r['max_abs_err_vs_sdpa']:.3g}" if "max_abs_err_vs_sdpa" in r else "-"
        lines.append(
            f"| {r['mix']} | {r['backend']} | {r['layout']} | {r['ms']:.3f} | {r['tokens_per_s']:.0f} "
            f"| {r['x_sdpa_loop']:.2f} | {err} | |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_serving.json", help="JSON results path")
    ap.add_argument("--iters", type=int, default=5, help="timed calls on CPU (median)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the code paths")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
    if device == "cpu" and not args.cpu_smoke:
        raise SystemExit("bench_serving needs a GPU (or --cpu-smoke for the tiny CPU run)")
    import rocm_attn  # noqa: F401  (registers the ops and the attention backends)

    mixes, shape = (SMOKE_MIXES, SMOKE_SHAPE) if args.cpu_smoke else (MIXES, SHAPE)
    torch.manual_seed(0)
    start = time.time()
    rows = []
    for name, specs in mixes.items():
        rows += run_mix(name, specs, shape, device, args.iters)
    table = markdown(rows)
    print(table)
    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "mixes": {k: len(v) for k, v in mixes.items()},
        "rows": rows,
        "table": table,
        "seconds": time.time() - start,
        "command": "python benchmarks/bench_serving.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
