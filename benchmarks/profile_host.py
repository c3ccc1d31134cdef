"""Is a compiled prefill waiting on Python? Enqueue vs synced time of one step, and a cProfile of a few steps.

    python benchmarks/profile_host.py --out-dir results/        # rocm_attn PTPC, Llama 8 layers, 8 x 1024
    python benchmarks/profile_host.py --variant inductor --out-dir results/

For each of --calls steps: the time until ``forward()`` returns (enqueue: the host's work, since the GPU runs
asynchronously) and until the GPU has finished (synced). Enqueue close to synced means the step is host-bound
(the GPU waits on Python); well below it, GPU-bound. Then cProfile over --profile-steps steps, sorted by own
time and by cumulative time. Writes host_profile_<variant>.json (times) and .txt (the profile). GPU only.
Session 12 (H100): rocm_attn PTPC went from 29.7 ms enqueue / 32.1 ms synced to 16.7 / 30.8 when the ops
stopped going through torch.library.custom_op's per-call wrappers (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402  (model building and the variants, shared with the e2e benchmark)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="rocm_attn_ptpc:TRITON_ATTN", help="a bench_e2e.py variant")
    ap.add_argument("--model", default="llama", choices=sorted(bench_e2e.MODELS))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--shape", default="8x1024", help="BxS prefill tokens")
    ap.add_argument("--calls", type=int, default=7, help="timed steps")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_host needs a GPU")
    batch, tokens = (int(v) for v in args.shape.lower().split("x"))
    model = bench_e2e.build_model(args.model, args.layers, "cuda", False)
    forward, _ = bench_e2e.prepare(model, args.variant, True)
    ids = torch.randint(1, model.config.vocab_size, (batch, tokens), device="cuda")

    def step():
        forward(input_ids=ids, use_cache=False, logits_to_keep=1)

    enqueue, synced = [], []
    with torch.no_grad():
        for _ in range(3):  # compile and warm up
            step()
        for _ in range(args.calls):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            enqueue.append((t1 - t0) * 1e3)
            synced.append((time.perf_counter() - t0) * 1e3)
        profile = cProfile.Profile()
        torch.cuda.synchronize()
        profile.enable()
        for _ in range(args.profile_steps):
            step()
        profile.disable()
        torch.cuda.synchronize()
    result = {"variant": args.variant, "model": args.model, "layers": args.layers, "shape": args.shape,
              "enqueue_ms": sorted(enqueue), "synced_ms": sorted(synced),
              "enqueue_median_ms": statistics.median(enqueue), "synced_median_ms": statistics.median(synced),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(60)
    tag = args.variant.replace(":", "_")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"host_profile_{tag}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out_dir, f"host_profile_{tag}.txt"), "w") as f:
        f.write(text.getvalue())
    print(f"{args.variant}: enqueue {result['enqueue_median_ms']:.1f} ms, synced "
          f"{result['synced_median_ms']:.1f} ms (median of {args.calls}); profile in {args.out_dir}")


if __name__ == "__main__":
    main()
