"""End to end: prefill and decode throughput of a whole HF model: eager, torch.compile, torchao, rocm_attn.

    python benchmarks/bench_e2e.py --out results/bench_e2e.json                 # both models, 32/36 layers
    python benchmarks/bench_e2e.py --layers 4 --models llama --out results/e2e.json   # quick (GPU)
    python benchmarks/bench_e2e.py --cpu-smoke --out /tmp/e2e.json              # tiny config, CPU, < 30 s

Models: LlamaForCausalLM with the Llama-3.1-8B config and Qwen3ForCausalLM with the Qwen3-8B config, random
bf16 weights (no download); --layers cuts the depth (the per-layer shapes stay the 8B ones).

Variants (--variants, comma-separated; default all):
  eager                 HF, bf16, sdpa attention, no compile (decode: DynamicCache)
  inductor              torch.compile(model) for prefill; decode: HF generate with a static cache, which HF
                        compiles itself (its default CompileConfig: inductor, CUDA graphs)
  torchao_fp8_rowwise   torchao quantize_(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
                        then as inductor; skipped with a note where torchao is not installed
  rocm_attn_none        rocm_attn.patch(quantization="none") (attention only, TRITON_ATTN) + compile
  rocm_attn_ptpc:<B>    rocm_attn.patch(quantization="ptpc_fp8", attention_backend=B) + compile, one per
                        registered attention backend B
  rocm_attn_ptpc_fast_accum  as rocm_attn_ptpc:TRITON_ATTN with fast_accum=True (FP8 GEMMs without fp32
                        promotion of the partial sums, as torchao's rowwise default)
  rocm_attn_ptpc_lm_head  as rocm_attn_ptpc:TRITON_ATTN with the lm_head quantized too (skip_modules without
                        "lm_head"; the default keeps it bf16); for the weight-memory row
  rocm_attn_ptpc_unfused  as rocm_attn_ptpc:TRITON_ATTN with fuse_projections=False (q/k/v and gate/up as
                        separate GEMMs, each with its own weight buffer): the A/B of the projection fusion
  rocm_attn_ptpc_bf16_embed  as rocm_attn_ptpc:TRITON_ATTN with quantize_embeddings=False (the input
                        embedding kept bf16; the default stores it in fp8, one scale per row); weight row
  (rocm_attn variants: prefill is torch.compile(model, backend="rocm_attn"); decode is generate() on the
  paged RocmAttnCache with decode compiled by backend="rocm_attn", as patch(compile=True) sets up.)

Measured per (model, variant):
  prefill  tokens/s of forward(use_cache=False, logits_to_keep=1) at 1 x 8192 and 8 x 1024 (median, --iters);
           compile_s = first call - a steady call (the compile time)
  decode   tokens/s at batch 1, 16, 64 on a 2048-token context: generate(1 + --new-tokens) minus generate(1)
           (same prompt), so the prefill cancels out; first_s = the first generate (compiles decode)
  memory   weight bytes (parameters + buffers) and peak GPU memory of the variant (torch.cuda max allocated);
           --phases weights: only this (one row per variant, nothing timed)
Every case runs in try/except: a variant that cannot run a case gets a note, the rest go on.
Writes JSON (--out) with rows and a markdown table.

--rounds N (N > 1; prefill only): interleaved timing. On an H100 the compiled prefill is power-capped (~690 W,
SM clock ~1635 MHz median, 1350-1965), so timing variant A fully and then B lets the drift fall unevenly
on them (our variant vs torchao moved between 1.06x and 1.10x run to run). With --rounds, per model every
variant is built and kept resident (one Dynamo reset before the first; all must fit in GPU memory), each
shape is compiled by every variant's first call, then timed in N rounds; in each round every variant runs
--iters synced calls, in the same order (as benchmarks/bench_linear.py does for kernels):

    python benchmarks/bench_e2e.py --models qwen3 --layers 8 --phases prefill --prefill-shapes 8x1024 \
        --variants inductor,rocm_attn_ptpc:TRITON_ATTN,torchao_fp8_rowwise --rounds 3 --iters 5 \
        --out results/e2e_rounds.json

Each prefill row then has tokens_per_s / ms from the median of all N x --iters samples, rounds, round_ms
(each round's median), samples_ms, and against "inductor" and "torchao_fp8_rowwise" when in the run:
x_<base>_rounds (per round: <base>'s round ms / this row's) and x_<base> (the same of the overall
medians); the table gets a second, per-round part. peak_gib is None (the variants share the GPU: see
peak_note). --rounds > 1 needs --phases prefill and no --profile (run decode, weights and profiles
without it); --rounds 1 (default) is the one-variant-at-a-time run above.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA_31_8B = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
QWEN3_8B = dict(
    model_type="qwen3",
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
)
# --cpu-smoke: the same code paths on a model small enough for a CPU test
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=512,
)
MODELS = {"llama": LLAMA_31_8B, "qwen3": QWEN3_8B}

PREFILL_SHAPES = [(1, 8192), (8, 1024)]  # (batch, tokens)
DECODE_BATCHES = [1, 16, 64]
DECODE_CONTEXT = 2048
SMOKE = dict(prefill=[(1, 64), (2, 32)], batches=[2], context=32, new_tokens=4, iters=2)


def build_model(family: str, layers: int | None, device: str, smoke: bool):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    fields = dict(MODELS[family])
    fields.pop("model_type")
    if smoke:
        fields.update(TINY)
        fields.pop("rope_scaling", None)
    if layers:
        fields["num_hidden_layers"] = layers
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen3Config, Qwen3ForCausalLM)
    )
    config = config_cls(**fields, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)  # the same random weights for every variant
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = model_cls(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model


def backends() -> list[str]:
    import rocm_attn

    return [name for name, info in rocm_attn.available_attention_backends().items() if info["registered"]]


def all_variants() -> list[str]:
    return ["eager", "inductor", "torchao_fp8_rowwise", "rocm_attn_none", "rocm_attn_ptpc_fast_accum",
            "rocm_attn_ptpc_lm_head", "rocm_attn_ptpc_bf16_embed", "rocm_attn_ptpc_unfused"] + [
        f"rocm_attn_ptpc:{b}" for b in backends()
    ]


def prepare(model, variant: str, compile: bool):
    """(the callable for prefill, a note) after turning ``model`` into ``variant`` (in place)."""
    if variant == "eager":
        model.generation_config.disable_compile = True
        return model, ""
    if variant in ("inductor", "torchao_fp8_rowwise"):
        if variant == "torchao_fp8_rowwise":
            try:
                from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
            except ImportError as exc:
                raise Skip(f"torchao not installed ({exc}); pip install its wheel to get this row") from None
            quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        model.generation_config.cache_implementation = "static"
        return (torch.compile(model) if compile else model), "decode: static cache, HF-compiled"
    if variant.startswith("rocm_attn"):
        import rocm_attn

        from rocm_attn.config import DEFAULT_SKIP_MODULES

        fast_accum = variant == "rocm_attn_ptpc_fast_accum"
        skip = DEFAULT_SKIP_MODULES
        if variant == "rocm_attn_ptpc_lm_head":
            skip = tuple(m for m in DEFAULT_SKIP_MODULES if m != "lm_head")
        if variant == "rocm_attn_none":
            quantization, backend = "none", "TRITON_ATTN"
        else:
            quantization, backend = "ptpc_fp8", variant.partition(":")[2] or "TRITON_ATTN"
        options = {"quantization": quantization, "attention_backend": backend, "fast_accum": fast_accum,
                   "skip_modules": skip, "quantize_embeddings": variant != "rocm_attn_ptpc_bf16_embed",
                   "fuse_projections": variant != "rocm_attn_ptpc_unfused"}
        rocm_attn.patch(model, compile=compile, **options)
        prefill = torch.compile(model, backend="rocm_attn", options=options) if compile else model
        r = model.rocm_attn_report
        groups = f", {r.projection_groups} projection groups" if r.projection_groups else ""
        return prefill, f"{r.linears_replaced} linears fp8{groups}, {r.attention_layers} attention layers"
    raise ValueError(f"bench_e2e: unknown variant {variant!r}; known: {', '.join(all_variants())}")


class Skip(Exception):
    """A variant that cannot run here (a missing package): one row with the reason."""


def error_note(exc: Exception) -> str:
    return f"error: {type(exc).__name__}: {str(exc)[:200]}"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_seconds(fn, device: str, iters: int) -> float:
    times = sorted(seconds(fn, device) for _ in range(iters))
    return times[len(times) // 2]


@torch.no_grad()
def measure_prefill(forward, vocab: int, batch: int, tokens: int, device: str, iters: int) -> dict:
    ids = torch.randint(1, vocab, (batch, tokens), device=device)

    def call():
        forward(input_ids=ids, use_cache=False, logits_to_keep=1)

    first = seconds(call, device)
    steady = median_seconds(call, device, iters)
    return {
        "tokens_per_s": batch * tokens / steady,
        "ms": steady * 1e3,
        "first_s": first,
        "compile_s": max(first - steady, 0.0),
    }


@torch.no_grad()
def measure_decode(model, batch: int, context: int, new_tokens: int, device: str) -> dict:
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (batch, context), device=device)
    mask = torch.ones_like(ids)

    def generate(n):
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )

    first = seconds(lambda: generate(1 + new_tokens), device)  # compiles decode (GPU)
    t_prefill = min(seconds(lambda: generate(1), device) for _ in range(2))
    t_total = min(seconds(lambda: generate(1 + new_tokens), device) for _ in range(2))
    decode_s = max(t_total - t_prefill, 1e-9)
    return {
        "tokens_per_s": batch * new_tokens / decode_s,
        "ms_per_step": decode_s / new_tokens * 1e3,
        "first_s": first,
    }


def weight_bytes(model) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def setup_variant(family, variant, args, device):
    """(model, prefill callable, the fields all its rows share); (None, None, a note row) where the variant
    cannot be built here."""
    base = {"model": family, "variant": variant}
    model = build_model(family, args.layers, device, args.cpu_smoke)
    bf16_bytes = weight_bytes(model)
    try:
        forward, note = prepare(model, variant, not args.no_compile)
    except Skip as exc:
        return None, None, {**base, "case": "all", "note": str(exc)}
    except Exception as exc:
        return None, None, {**base, "case": "all", "note": error_note(exc)}
    common = {
        **base,
        "weight_gib": weight_bytes(model) / 2**30,
        "weight_vs_bf16": weight_bytes(model) / bf16_bytes,
        "setup": note,
    }
    return model, forward, common


def run_variant(family, variant, args, device) -> list[dict]:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    model, forward, common = setup_variant(family, variant, args, device)
    if model is None:
        return [common]
    rows = [] if (args.prefill or args.batches) else [{**common, "case": "weights", "phase": "weights"}]
    for batch, tokens in args.prefill:
        row = {
            **common,
            "case": f"prefill {batch}x{tokens}",
            "phase": "prefill",
            "batch": batch,
            "tokens": tokens,
        }
        try:
            row.update(measure_prefill(forward, model.config.vocab_size, batch, tokens, device, args.iters))
            if variant.startswith("rocm_attn"):
                row["attention_mask"] = attention_mask_notes()
            if args.profile:
                row["profile"] = profile_prefill(forward, model.config.vocab_size, batch, tokens, device)
                print(f"profile {family} {variant} {batch}x{tokens}\n{row['profile']}", flush=True)
        except Exception as exc:  # one case that cannot run (memory, an unsupported shape): say why, go on
            row["note"] = error_note(exc)
        rows.append(row)
        print(json.dumps(rounded(row)), flush=True)
    for batch in args.batches:
        row = {
            **common,
            "case": f"decode b{batch} ctx{args.context}",
            "phase": "decode",
            "batch": batch,
            "context": args.context,
            "new_tokens": args.new_tokens,
        }
        try:
            row.update(measure_decode(model, batch, args.context, args.new_tokens, device))
        except Exception as exc:
            row["note"] = error_note(exc)
        rows.append(row)
        print(json.dumps(rounded(row)), flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    for row in rows:
        row["peak_gib"] = peak
    del forward, model
    gc.collect()
    return rows


RATIO_BASES = ("inductor", "torchao_fp8_rowwise", "rocm_attn_ptpc_unfused")  # --rounds: speed-ups over these
PEAK_NOTE = "peak memory not per-variant in --rounds mode (all variants resident at once)"


@torch.no_grad()
def measure_prefill_rounds(forwards: dict, vocab: int, batch: int, tokens: int, device: str, iters: int,
                           rounds: int) -> dict:
    """{variant: its prefill measurement} of all ``forwards`` at once: each one's first call (the compile),
    then ``rounds`` rounds, each timing every variant ``iters`` calls, in the same order. A variant that
    fails gets {"note": why} and leaves the rounds; the others go on."""
    ids = torch.randint(1, vocab, (batch, tokens), device=device)  # the same tokens for every variant
    calls = {v: (lambda f=f: f(input_ids=ids, use_cache=False, logits_to_keep=1))
             for v, f in forwards.items()}
    out = {v: {} for v in calls}
    samples = {v: [] for v in calls}  # per variant: one list of `iters` seconds per round
    for variant, call in calls.items():
        try:
            out[variant]["first_s"] = seconds(call, device)
            if variant.startswith("rocm_attn"):  # the report of the compile just done: this variant's
                out[variant]["attention_mask"] = attention_mask_notes()
        except Exception as exc:
            out[variant]["note"] = error_note(exc)
    for _ in range(rounds):
        for variant, call in calls.items():
            if "note" in out[variant]:
                continue
            try:
                samples[variant].append([seconds(call, device) for _ in range(iters)])
            except Exception as exc:
                out[variant]["note"] = error_note(exc)
    for variant, per_round in samples.items():
        if "note" in out[variant]:
            continue
        flat = [t for times in per_round for t in times]
        steady = statistics.median(flat)
        out[variant].update({
            "tokens_per_s": batch * tokens / steady,
            "ms": steady * 1e3,
            "compile_s": max(out[variant]["first_s"] - steady, 0.0),
            "rounds": rounds,
            "round_ms": [statistics.median(times) * 1e3 for times in per_round],
            "samples_ms": [t * 1e3 for t in flat],  # in call order, `iters` per round
        })
    return out


def add_round_ratios(rows: list[dict]) -> None:
    """On the rows of one case: x_<base>_rounds = <base>'s round median ms / this row's, per round (> 1:
    faster than <base>; the two were timed minutes apart at most, under the same clocks), and x_<base> =
    the same of the medians over all rounds."""
    timed = [r for r in rows if "round_ms" in r]
    for row in timed:
        for base in timed:
            if base is row or base["variant"] not in RATIO_BASES:
                continue
            name = base["variant"]
            row[f"x_{name}_rounds"] = [b / r for b, r in zip(base["round_ms"], row["round_ms"], strict=True)]
            row[f"x_{name}"] = base["ms"] / row["ms"]


def run_family_rounds(family, variants, args, device) -> list[dict]:
    """--rounds: prefill of every variant of ``family`` interleaved. All are built and kept resident, then
    each shape is compiled per variant and timed round-robin, so the GPU's clock drift (power cap) falls on
    all variants alike instead of on whichever ran last."""
    if device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # once: a reset between variants would throw away the compiled code of those built
    # All variants' graphs share the model's code objects. Without automatic dynamic shapes each variant compiles
    # one static graph per shape, as in a one-variant run (with it, the second variant's differing weights made
    # Dynamo recompile everything with dynamic shapes: twice the compile time, and other code than the
    # one-variant run times); the recompile limit grows so that no variant silently runs eager.
    limit = max(torch._dynamo.config.recompile_limit, 2 * len(variants) * max(len(args.prefill), 1))
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=limit):
        return _run_family_rounds(family, variants, args, device)


def _run_family_rounds(family, variants, args, device) -> list[dict]:
    rows, models, forwards, common = [], [], {}, {}
    for variant in variants:
        print(f"== {family} {variant} (build)", file=sys.stderr, flush=True)
        model, forward, fields = setup_variant(family, variant, args, device)
        if model is None:  # skipped or failed: its note row, and no part in the rounds
            rows.append(fields)
            continue
        models.append(model)
        forwards[variant], common[variant] = forward, fields
    for batch, tokens in args.prefill if forwards else []:
        case = f"prefill {batch}x{tokens}"
        print(f"== {family} {case}: {args.rounds} rounds of {', '.join(forwards)}", file=sys.stderr,
              flush=True)
        vocab = models[0].config.vocab_size
        results = measure_prefill_rounds(forwards, vocab, batch, tokens, device, args.iters, args.rounds)
        case_rows = [
            {**common[v], "case": case, "phase": "prefill", "batch": batch, "tokens": tokens, **result,
             "peak_gib": None, "peak_note": PEAK_NOTE}
            for v, result in results.items()
        ]
        add_round_ratios(case_rows)
        for row in case_rows:
            print(json.dumps(rounded(row)), flush=True)
        rows += case_rows
    del forwards, models
    gc.collect()
    return rows


@torch.no_grad()
def profile_prefill(forward, vocab: int, batch: int, tokens: int, device: str, top: int = 15) -> str:
    """One prefill call under torch.profiler: the top CUDA kernels by total time, as a table."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(1, vocab, (batch, tokens), device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        forward(input_ids=ids, use_cache=False, logits_to_keep=1)
        sync(device)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=70)


def attention_mask_notes() -> str:
    """What the last rocm_attn compile did with the attention masks (the report's per-site notes)."""
    from rocm_attn.passes import report as report_mod

    if not report_mod.recent:
        return "no rocm_attn compile report"
    notes = [s.detail.get("mask", s.reason) for s in report_mod.recent[-1].sites("attention")]
    return "; ".join(f"{n} x{notes.count(n)}" for n in dict.fromkeys(notes)) or "no attention sites"


def rounded(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | variant | case | tokens/s | x eager | x inductor | compile / first s "
        "| weights GiB (x bf16) "
        "| peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {(r["model"], r["variant"], r["case"]): r.get("tokens_per_s") for r in rows}

    def ratio(r, variant):
        base = ref.get((r["model"], variant, r["case"]))
        return f"{r['tokens_per_s'] / base:.2f}" if base and r.get("tokens_per_s") else "-"

    for r in rows:
        weights = f"{r['weight_gib']:.2f} ({r['weight_vs_bf16']:.3f})" if "weight_gib" in r else "-"
        if "tokens_per_s" not in r:
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['case']} | - | - | - | - | {weights} | - | "
                f"{r.get('note', '')} |"
            )
            continue
        first = r.get("compile_s", r.get("first_s"))
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['case']} | {r['tokens_per_s']:.0f} | {ratio(r, 'eager')} "
            f"| {ratio(r, 'inductor')} | {first:.1f} | {weights} "
            f"| {peak} | {r.get('note', '')} |"
        )
    timed = [r for r in rows if "round_ms" in r]
    if timed:  # --rounds: each round's median and the ratios of the same round
        bases = [b for b in RATIO_BASES if any(f"x_{b}" in r for r in timed)]
        lines += [
            "",
            f"--rounds {timed[0]['rounds']}: prefill timed round-robin; ms = each round's median of --iters "
            "calls; x base = base ms / this ms: overall medians (per round). " + PEAK_NOTE,
            "",
            "| model | variant | case | ms per round | "
            + " | ".join(f"x {b} (rounds)" for b in bases) + " |",
            "|---|---|---|---|" + "---|" * len(bases),
        ]
        for r in timed:
            cells = [
                f"{r[f'x_{b}']:.3f} ({', '.join(f'{x:.3f}' for x in r[f'x_{b}_rounds'])})"
                if f"x_{b}" in r else "-"
                for b in bases
            ]
            per_round = ", ".join(f"{ms:.2f}" for ms in r["round_ms"])
            lines.append(f"| {r['model']} | {r['variant']} | {r['case']} | {per_round} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_e2e.json", help="JSON results path")
    ap.add_argument(
        "--models", default=None, help="comma-separated: llama, qwen3 (default both; --cpu-smoke: llama)"
    )
    ap.add_argument("--variants", default="all", help="comma-separated (see above), or all")
    ap.add_argument("--layers", type=int, default=None, help="cut the model to this many layers")
    ap.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per generate")
    ap.add_argument("--iters", type=int, default=5, help="timed prefill calls (median)")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile anywhere (eager everything)")
    ap.add_argument("--phases", default="prefill,decode",
                    help="comma-separated: prefill, decode; or weights (weight bytes only, nothing timed)")
    ap.add_argument("--prefill-shapes", default=None, help="comma-separated BxS (default 1x8192,8x1024)")
    ap.add_argument("--profile", action="store_true",
                    help="after timing each prefill case, profile one call: top CUDA kernels into the row")
    ap.add_argument("--rounds", type=int, default=1,
                    help="> 1: prefill only (--phases prefill, no --profile): every variant built first, "
                         "then timed round-robin, N rounds of --iters calls each; medians, per-round ratios")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny config, tiny shapes, CPU: checks the code paths"
    )
    args = ap.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - {"prefill", "decode", "weights"} or ("weights" in phases and len(phases) > 1):
        ap.error(f"--phases: prefill and/or decode, or weights alone (got {args.phases!r})")
    if args.rounds < 1:
        ap.error(f"--rounds: 1 or more (got {args.rounds})")
    if args.rounds > 1 and phases != {"prefill"}:  # decode and weights keep the one-variant-at-a-time runs
        ap.error(f"--rounds {args.rounds} interleaves prefill only: pass --phases prefill "
                 f"(got --phases {args.phases!r}; run decode or weights without --rounds)")
    if args.rounds > 1 and args.profile:
        ap.error("--rounds with --profile: profile in a run without --rounds")
    args.prefill, args.batches, args.context = PREFILL_SHAPES, DECODE_BATCHES, DECODE_CONTEXT
    args.models = args.models or (None if args.cpu_smoke else "llama,qwen3")
    if args.cpu_smoke:
        args.prefill, args.batches, args.context = SMOKE["prefill"], SMOKE["batches"], SMOKE["context"]
        args.new_tokens, args.iters = (
            min(args.new_tokens, SMOKE["new_tokens"]),
            min(args.iters, SMOKE["iters"]),
        )
        args.models = args.models or "llama"
        args.no_compile = True  # HF compiles decode on GPUs only; a CPU inductor compile would take minutes
    if args.prefill_shapes and not args.cpu_smoke:
        try:
            shapes = args.prefill_shapes.split(",")
            args.prefill = [tuple(int(x) for x in shape.split("x")) for shape in shapes]
        except ValueError:
            ap.error(f"--prefill-shapes: BxS pairs like 8x1024 expected (got {args.prefill_shapes!r})")
    if "prefill" not in phases:
        args.prefill = []
    if "decode" not in phases:
        args.batches = []
    return args


def main(argv=None):
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
    if device == "cpu" and not args.cpu_smoke:
        raise SystemExit("bench_e2e needs a GPU (or --cpu-smoke for the tiny CPU run)")
    import rocm_attn  # noqa: F401  (registers the ops, the backend and the attention backends)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"bench_e2e: unknown model {m!r}; choose from {', '.join(MODELS)}")
    known = all_variants()
    variants = known if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in known:
            raise SystemExit(f"bench_e2e: unknown variant {v!r}; choose from {', '.join(known)}")
    start = time.time()
    rows = []
    for family in models:
        if args.rounds > 1:  # every variant at once, prefill interleaved
            new_rows = run_family_rounds(family, variants, args, device)
            for row in new_rows:
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)
            rows += new_rows
            continue
        for variant in variants:
            print(f"== {family} {variant}", file=sys.stderr, flush=True)
            new_rows = run_variant(family, variant, args, device)
            for row in new_rows:  # as they come: a run cut short by a timeout still leaves its rows
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)
            rows += new_rows
    table = markdown(rows)
    print(table)
    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "models": models,
        "variants": variants,
        "layers": args.layers,
        "rounds": args.rounds,
        "rows": rows,
        "table": table,
        "seconds": time.time() - start,
        "command": "python benchmarks/bench_e2e.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
