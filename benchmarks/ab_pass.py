"""Prefill with and without one of rocm_attn's torch-level passes, alternating in one process (GPU).

    python benchmarks/ab_pass.py --pass rope_tables --out results/ab_rope_tables.json   # ~70 s on an H100

Builds the Llama-3.1-8B (or Qwen3-8B) config with random bf16 weights as bench_e2e.py does, prepares the
variant rocm_attn_ptpc:TRITON_ATTN (patch() + torch.compile(backend="rocm_attn")), and times the prefill
with the pass in the pass list and without it, A/B/A/B (--reps pairs): run-to-run noise between machines is
a few percent, so a pass's effect is only readable within one run. The last pair is also profiled (top CUDA
kernels into the JSON). Writes JSON and prints one line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402


def main(argv=None):
    from rocm_attn.passes import pass_manager

    names = [name for name, _ in pass_manager.PASSES]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pass", dest="pass_name", required=True, choices=names, help="the pass to leave out")
    ap.add_argument("--model", default="llama", choices=sorted(bench_e2e.MODELS))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--shape", default="8x1024", help="BxS prefill shape")
    ap.add_argument("--reps", type=int, default=2, help="A/B pairs")
    ap.add_argument("--iters", type=int, default=10, help="timed prefill calls per run (median)")
    ap.add_argument("--out", default="ab_pass.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ab_pass.py needs a CUDA GPU")
    batch, tokens = (int(v) for v in args.shape.split("x"))
    all_passes = list(pass_manager.PASSES)
    rows = []
    try:
        for rep in range(args.reps):
            for with_pass in (True, False):
                pass_manager.PASSES[:] = [p for p in all_passes if with_pass or p[0] != args.pass_name]
                torch._dynamo.reset()
                torch.cuda.empty_cache()
                model = bench_e2e.build_model(args.model, args.layers, "cuda", False)
                forward, _ = bench_e2e.prepare(model, "rocm_attn_ptpc:TRITON_ATTN", True)
                vocab = model.config.vocab_size
                row = {"pass": args.pass_name, "with_pass": with_pass, "rep": rep,
                       **bench_e2e.measure_prefill(forward, vocab, batch, tokens, "cuda", args.iters)}
                if rep == args.reps - 1:
                    row["profile"] = bench_e2e.profile_prefill(forward, vocab, batch, tokens, "cuda", top=14)
                rows.append(row)
                print(f"{args.pass_name} {'on ' if with_pass else 'off'} rep {rep}: {row['ms']:.3f} ms, "
                      f"{row['tokens_per_s']:.0f} tokens/s", flush=True)
                del model, forward
    finally:
        pass_manager.PASSES[:] = all_passes
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
              "layers": args.layers, "shape": args.shape, "rows": rows,
              "command": "python benchmarks/ab_pass.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
