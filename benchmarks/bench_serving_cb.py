"""Serving through Hugging Face continuous batching: the same requests, HF's attention vs a patched model.

    python benchmarks/bench_serving_cb.py --out results/bench_serving_cb.json    # GPU, 8B config, 32 layers
    python benchmarks/bench_serving_cb.py --layers 8 --out results/cb.json        # quicker (GPU)
    python benchmarks/bench_serving_cb.py --cpu-smoke --out /tmp/cb.json          # tiny config, CPU

bench_serving.py times one layer's attention over a hand-built mixed step. This script runs whole requests
through ``model.generate_batch`` (transformers' continuous batching: its scheduler, paged cache and sampling),
so each step mixes what HF's scheduler mixes: new prompts chunked to --max-batch-tokens, one-token decodes of
the running requests. Model: LlamaForCausalLM with the Llama-3.1-8B config and random bf16 weights (no
download); --layers cuts the depth. Workloads (prompt lengths drawn uniformly, seed 0):
  decode-heavy    64 requests of 512-1535 prompt tokens, 64 new tokens each (most steps are decodes of a
                  64-request batch)
  prefill-heavy   16 requests of 1024-3071 prompt tokens, 8 new tokens each (most of the time goes to the
                  prompts)
Variants (--variants; default all):
  hf                  the unpatched model; CB runs HF's paged SDPA (masked; what a user gets without a flash
                      package). CUDA graphs: HF's own choice (off for masked attention)
  rocm_attn_none      rocm_attn.patch(quantization="none", compile=False): our attention on HF's paged cache
  rocm_attn_ptpc:<B>  rocm_attn.patch(quantization="ptpc_fp8", attention_backend=B, compile=False), one per
                      registered attention backend B
  rocm_attn_ptpc_unfused:<B>  (on request only) the same with fuse_projections=False: q/k/v and gate/up
                      run as 7 linears per layer, not as 4 (patch.SharedInputProjections); the A/B of it
  rocm_attn_ptpc_op:<B>  (on request only) rocm_attn_ptpc with ROCM_ATTN_EAGER_PLANS=0: every eager linear
                      goes through torch.ops.rocm_attn.ptpc_linear (its checks and provider choices on each
                      call); the A/B of kernels/ptpc_linear.py's ptpc_linear_eager
CB cannot take CUDA graphs with rocm_attn (its metadata is built on the host each step), and compile stays
off for every variant, so all rows are eager PyTorch under the same scheduler. Every variant gets the same
ContinuousBatchingConfig (pages, num_blocks sized to the workload, max_batch_tokens).

Per (workload, variant): wall seconds of generate_batch (the median of --iters timed runs after one untimed
run of the same workload, whose time is kept as first_run_s: Triton's compiles happen there), generated
tokens/s, all tokens/s (prompt + generated), forward steps, peak GPU memory, and the share of requests whose
first greedy token equals the "hf" row's (random weights give flat logits, so near-ties make even two bf16
attention implementations disagree now and then, FP8 more often: a sanity figure, not an accuracy one;
tests/hf/test_continuous_batching.py checks token identity on a model where it is well defined).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import build_model, error_note, sync  # noqa: E402  (the same 8B-config model)

WORKLOADS = {  # name: (requests, prompt lengths [lo, hi), new tokens per request)
    "decode-heavy": (64, (512, 1536), 64),
    "prefill-heavy": (16, (1024, 3072), 8),
}
SMOKE_WORKLOADS = {"decode-heavy": (6, (8, 24), 6), "prefill-heavy": (3, (24, 40), 2)}
PAGE = 256  # HF's default page size (tokens per page)
SMOKE_PAGE = 16


def variants() -> list[str]:
    import rocm_attn

    names = [name for name, info in rocm_attn.available_attention_backends().items() if info["registered"]]
    return ["hf", "rocm_attn_none"] + [f"rocm_attn_ptpc:{b}" for b in names]


def make_prompts(requests: int, prompt_range: tuple[int, int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(*prompt_range, (requests,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def cb_config(prompts, new_tokens: int, page: int, max_batch_tokens: int):
    """The same cache and batch bounds for every variant: enough pages for every request at once."""
    from transformers import ContinuousBatchingConfig

    # the pages' field is page_size in transformers >= 5.2x, block_size in 5.17
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    page_field = "page_size" if "page_size" in fields else "block_size"
    num_blocks = sum(-(-(len(p) + new_tokens) // page) for p in prompts) + 8
    return ContinuousBatchingConfig(num_blocks=num_blocks, max_batch_tokens=max_batch_tokens,
                                    **{page_field: page})


def prepare(model, variant: str):
    """Turn ``model`` into ``variant`` in place; returns a short note."""
    if variant == "hf":
        return f"HF {model.config._attn_implementation} (paged under CB)"
    import rocm_attn

    if variant == "rocm_attn_none":
        rocm_attn.patch(model, quantization="none", attention_backend="TRITON_ATTN", compile=False)
    elif variant.startswith(("rocm_attn_ptpc:", "rocm_attn_ptpc_unfused:", "rocm_attn_ptpc_op:")):
        rocm_attn.patch(model, quantization="ptpc_fp8", attention_backend=variant.partition(":")[2],
                        compile=False, fuse_projections=not variant.startswith("rocm_attn_ptpc_unfused:"))
        if variant.startswith("rocm_attn_ptpc_op:"):
            os.environ["ROCM_ATTN_EAGER_PLANS"] = "0"  # main() restores it after this variant
    else:
        raise ValueError(f"bench_serving_cb: unknown variant {variant!r}; known: {', '.join(variants())}, "
                         "rocm_attn_ptpc_unfused:<backend>, rocm_attn_ptpc_op:<backend>")
    r = model.rocm_attn_report
    return f"{r.linears_replaced} linears fp8, {r.attention_layers} attention layers, {r.attention_backend}"


def generate(model, prompts, new_tokens: int, config) -> list[list[int]]:
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    out = model.generate_batch(prompts, generation_config=gen, continuous_batching_config=config,
                               progress_bar=False)
    tokens = []
    for i in range(len(prompts)):
        result = out[f"req_{i}"]
        if result.error is not None:
            raise RuntimeError(f"request {i}: {result.error}")
        tokens.append(list(result.generated_tokens))
        if len(tokens[-1]) != new_tokens:
            raise RuntimeError(f"request {i} made {len(tokens[-1])} tokens, not {new_tokens}")
    return tokens


def first_token_agreement(tokens, reference) -> float:
    """The share of requests whose first generated token is the reference's: the one position where both
    saw the same context (after a first difference the continuations differ everywhere)."""
    return sum(t[:1] == r[:1] for t, r in zip(tokens, reference, strict=True)) / max(1, len(reference))


@torch.no_grad()
def run_variant(variant, workloads, page, args, device, reference) -> list[dict]:
    if device == "cuda":
        torch.cuda.empty_cache()
    model = build_model("llama", args.layers, device, args.cpu_smoke)
    try:
        note = prepare(model, variant)
    except Exception as exc:
        return [{"workload": w, "variant": variant, "note": error_note(exc)} for w in workloads]
    steps = [0]
    hook = model.register_forward_pre_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    rows = []
    for name, (requests, prompt_range, new_tokens) in workloads.items():
        prompts = make_prompts(requests, prompt_range, model.config.vocab_size)
        config = cb_config(prompts, new_tokens, page, args.max_batch_tokens)
        row = {"workload": name, "variant": variant, "requests": requests, "new_tokens": new_tokens,
               "prompt_tokens": sum(map(len, prompts)), "setup": note}
        try:
            # untimed: the whole workload once. Triton compiles a kernel per specialization it meets (an
            # int's traits, a power-of-two row block), and CB steps pass many batch sizes: a shorter warm-up
            # left compiles in the timed runs (H100: 30.8 s then 13.9 s, Session 17)
            sync(device)
            t0 = time.perf_counter()
            generate(model, prompts, new_tokens, config)
            sync(device)
            row["first_run_s"] = time.perf_counter() - t0
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            stats = getattr(model, "rocm_attn_cb_stats", None)  # rocm_attn variants only
            walls, tokens = [], None
            for _ in range(args.iters):
                steps[0] = 0
                mixed_before = stats.mixed_steps if stats else None
                sync(device)
                t0 = time.perf_counter()
                tokens = generate(model, prompts, new_tokens, config)
                sync(device)
                walls.append(time.perf_counter() - t0)
            wall = statistics.median(walls)
            generated = requests * new_tokens
            row.update(
                wall_s=wall,
                walls_s=walls,
                generated_tokens_per_s=generated / wall,
                tokens_per_s=(row["prompt_tokens"] + generated) / wall,
                steps=steps[0],
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            )
            if stats is not None:
                row["mixed_steps"] = stats.mixed_steps - mixed_before
            if variant == "hf":
                reference[name] = tokens
            elif name in reference:
                row["first_token_agreement_vs_hf"] = first_token_agreement(tokens, reference[name])
        except Exception as exc:  # a variant that cannot run a workload: say why, go on
            row["note"] = error_note(exc)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "walls_s"}), flush=True)
    hook.remove()
    del model
    gc.collect()
    return rows


def add_ratios(rows) -> None:
    base = {r["workload"]: r["wall_s"] for r in rows if r["variant"] == "hf" and "wall_s" in r}
    for r in rows:
        if "wall_s" in r and r["workload"] in base:
            r["x_hf"] = base[r["workload"]] / r["wall_s"]


def markdown(rows) -> str:
    lines = [
        "| workload | variant | wall s | generated tok/s | all tok/s | x hf | steps | peak GiB "
        "| first token = hf | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "wall_s" not in r:
            dashes = " - |" * 7
            lines.append(f"| {r['workload']} | {r['variant']} |{dashes} {r.get('note', '')} |")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {r['workload']} | {r['variant']} | {r['wall_s']:.3f} | {r['generated_tokens_per_s']:.0f} "
            f"| {r['tokens_per_s']:.0f} | {fmt(r.get('x_hf'), '.2f')} | {r['steps']} "
            f"| {fmt(r.get('peak_gib'), '.1f')} | {fmt(r.get('first_token_agreement_vs_hf'), '.2f')} | |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_serving_cb.json", help="JSON results path")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: all 32)")
    ap.add_argument("--variants", default=None, help="comma-separated (default: all; see above)")
    ap.add_argument("--workloads", default=None, help="comma-separated (default: both)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed runs per workload (median; default 3, smoke 1)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="tokens per CB step (default 4096)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU: checks the code paths")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
    if device == "cpu" and not args.cpu_smoke:
        raise SystemExit("bench_serving_cb needs a GPU (or --cpu-smoke for the tiny CPU run)")
    import rocm_attn  # noqa: F401  (registers the ops and the attention backends)

    workloads, page = (SMOKE_WORKLOADS, SMOKE_PAGE) if args.cpu_smoke else (WORKLOADS, PAGE)
    if args.workloads:
        unknown = set(args.workloads.split(",")) - set(workloads)
        if unknown:
            raise SystemExit(f"bench_serving_cb: unknown workloads {sorted(unknown)}; "
                             f"known: {sorted(workloads)}")
        workloads = {k: v for k, v in workloads.items() if k in args.workloads.split(",")}
    args.iters = args.iters or (1 if args.cpu_smoke else 3)
    args.max_batch_tokens = args.max_batch_tokens or (32 if args.cpu_smoke else 4096)
    names = args.variants.split(",") if args.variants else variants()
    if "hf" in names:  # first: the others' agreement is against its tokens
        names = ["hf"] + [n for n in names if n != "hf"]
    start = time.time()
    rows, reference = [], {}
    eager_plans = os.environ.get("ROCM_ATTN_EAGER_PLANS")
    for variant in names:  # the JSON is rewritten after each variant: a run cut short keeps what it measured
        rows += run_variant(variant, workloads, page, args, device, reference)
        if eager_plans is None:  # rocm_attn_ptpc_op sets it for its own run
            os.environ.pop("ROCM_ATTN_EAGER_PLANS", None)
        else:
            os.environ["ROCM_ATTN_EAGER_PLANS"] = eager_plans
        add_ratios(rows)
        write(args, argv, device, workloads, page, rows, start)
    print(markdown(rows))
    print(f"\nwrote {args.out} in {time.time() - start:.0f} s")


def write(args, argv, device, workloads, page, rows, start) -> None:
    import transformers

    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "layers": args.layers,
        "workloads": {k: {"requests": n, "prompt_range": p, "new_tokens": t}
                      for k, (n, p, t) in workloads.items()},
        "page": page,
        "max_batch_tokens": args.max_batch_tokens,
        "rows": rows,
        "table": markdown(rows),
        "seconds": time.time() - start,
        "command": "python benchmarks/bench_serving_cb.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
