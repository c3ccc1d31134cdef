"""Compile time and prefill throughput: plain torch.compile (inductor) vs backend="rocm_attn",
on a random-weight LlamaForCausalLM with the Llama-3.1-8B config in bf16 (GPU only).

    python benchmarks/bench_compile.py --out results/bench_compile.json              # 32 layers
    python benchmarks/bench_compile.py --layers 4 --out results/bench_compile.json   # quick (< 3 min)

Per backend, in a fresh Dynamo state with Inductor's caches disabled for this process (so both
pay a full first compile): first compile + first call (s), then prefill tokens/s at --batch x
--seq (use_cache=False, logits_to_keep=1, median of --iters timed calls), and peak GPU memory.
Also eager bf16 tokens/s, and for rocm_attn the rewrite report's counts and weight memory.
Target: rocm_attn first compile <= 1.5x inductor's. Writes JSON (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # before torch: both compile cold

import torch  # noqa: E402
from bench_e2e import LLAMA_31_8B  # noqa: E402  (the one copy of the config; this script's folder is on sys.path)


def build_model(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in LLAMA_31_8B.items() if k != "model_type"}
    config = LlamaConfig(**{**fields, "num_hidden_layers": layers})
    config._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model


def time_calls(fn, iters: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_backend(model, ids, backend, options, iters):
    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()
    kwargs = {"backend": backend} if backend != "eager" else None
    compiled = (
        torch.compile(model, **kwargs, **({"options": options} if options else {})) if kwargs else model
    )

    def call():
        return compiled(input_ids=ids, use_cache=False, logits_to_keep=1)

    row = {"backend": backend, "options": options}
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        torch.cuda.synchronize()
        row["first_call_s"] = time.perf_counter() - t0
        for _ in range(2):
            call()
        sec = time_calls(call, iters)
    row["prefill_ms"] = sec * 1e3
    row["tokens_per_s"] = ids.numel() / sec
    row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if backend == "rocm_attn":
        from rocm_attn.passes.report import recent

        r = recent[-1]
        row["report"] = {
            "attention": f"{r.attention_rewritten}/{r.attention_total}",
            "linear": f"{r.linear_rewritten}/{r.linear_total}",
            "fusions": r.fusions,
            "memory": r.memory,
            "errors": r.errors,
        }
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--quantization", default="ptpc_fp8")
    p.add_argument("--fuse-projections", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_compile needs a GPU")
    import rocm_attn  # noqa: F401  (registers the ops; the backend is found by its entry point)

    model = build_model(args.layers)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device="cuda")
    options = {"quantization": args.quantization, "fuse_projections": bool(args.fuse_projections)}
    rows = [
        run_backend(model, ids, "eager", None, args.iters),
        run_backend(model, ids, "inductor", None, args.iters),
        run_backend(model, ids, "rocm_attn", options, args.iters),
    ]
    inductor, ours = rows[1], rows[2]
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "layers": args.layers,
        "batch": args.batch,
        "seq": args.seq,
        "compile_ratio": ours["first_call_s"] / inductor["first_call_s"],
        "speedup_vs_inductor": ours["tokens_per_s"] / inductor["tokens_per_s"],
        "rows": rows,
    }
    print(
        f"\n{summary['device']}, Llama-3.1-8B config, {args.layers} layers, bf16, "
        f"prefill {args.batch}x{args.seq}\n"
    )
    print("| backend | first compile + call (s) | prefill ms | tokens/s | peak GiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['backend']} | {r['first_call_s']:.1f} | {r['prefill_ms']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['peak_mem_gib']:.1f} |"
        )
    print(
        f"\ncompile time ratio rocm_attn / inductor: {summary['compile_ratio']:.2f} (target <= 1.5); "
        f"prefill speedup vs inductor: {summary['speedup_vs_inductor']:.2f}x"
    )
    print("rocm_attn report:", json.dumps(ours["report"]))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2, default=str)


if __name__ == "__main__":
    main()
