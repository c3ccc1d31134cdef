"""Accuracy by layer (issue 7): how much error each FP8 recipe adds on every linear of a real model.

    python benchmarks/accuracy_layers.py --tokens 512 --out /tmp/acc.json  # SmolLM2, CPU
    python benchmarks/accuracy_layers.py --tiny --out /tmp/acc.json         # random tiny Llama

The bf16 model runs the first ``--tokens`` tokens of the corpus ``rocm-attn eval`` scores (one window, so
position 0 is in it, as in every eval window). A forward hook on every linear that ``rocm_attn.patch()``
quantizes (lm_head and embeddings stay bf16) takes the layer's bf16 input x and weight w; the reference is
the float64 product x @ w^T (+ bias). Recipes, each scored against it:

  ptpc         per_token_quant_fp8(x) + quantize_weight_per_channel(w) + ptpc_scaled_mm (torch provider)
  per_tensor   quantize_weight_per_tensor(w) + fp8_per_tensor_linear (torch provider)
  w_channel    weight only: x exact, w per-channel FP8 (dequantized, float64 product)
  w_tensor     weight only: x exact, w per-tensor FP8
  x_token      activation only: x per-token FP8, w exact
  x_tensor     activation only: x per-tensor FP8 (one scale for all tokens), w exact
  bf16         what the bf16 model itself does (x @ w^T in bf16): the floor every recipe sits on

Errors: ``err`` = ||y - ref|| / ||ref|| over the whole output (big tokens dominate) and ``tok_err`` = the
mean over tokens of ||y_t - ref_t|| / ||ref_t|| (every token counts the same; per-tensor scaling hurts
small tokens, which ``err`` hides). Input stats per layer: ``outlier`` = mean over tokens of
max|x_t| / rms(x_t), ``token_range`` = max over tokens of max|x_t| / median over tokens of max|x_t|,
``x_subnormal_tensor`` / ``x_subnormal_token`` = fraction of nonzero x elements that land among fp8's
subnormals (3 or fewer mantissa bits lost) under a per-tensor / per-token activation scale.

``--ppl`` also scores the tokens ``rocm-attn eval --tokens N --window W --stride W`` scores (same corpus,
windows and model variants; its bf16 / ptpc_fp8 / fp8_per_tensor perplexities come out identical), per token,
so each perplexity change gets a 95% interval (normal approximation over blocks of 64 tokens). Extra rows:
``--keep down_proj --keep v_proj+o_proj`` adds PTPC with those linear types kept in bf16 (a measured option,
not a default); ``--sensitivity`` adds PTPC on one linear type at a time (which type costs the most);
``--lm-head`` adds PTPC with the lm_head quantized too, and the lm_head alone (what the opt-in weights saving
of bench_e2e's rocm_attn_ptpc_lm_head costs in accuracy):

    python benchmarks/accuracy_layers.py --ppl --ppl-tokens 4096 --window 1024 --sensitivity --keep down_proj
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import re
import sys
import time

import torch
from rocm_attn.kernels.per_token_quant import per_token_quant_fp8_torch
from rocm_attn.kernels.platform import fp8_dtype, fp8_max
from rocm_attn.kernels.ptpc_linear import fp8_per_tensor_linear_torch
from rocm_attn.kernels.ptpc_scaled_mm import ptpc_scaled_mm_torch
from torch import nn

import rocm_attn
from rocm_attn.config import DEFAULT_SKIP_MODULES
from rocm_attn.perplexity import ratio_ci

RECIPES = ("ptpc", "per_tensor", "w_channel", "w_tensor", "x_token", "x_tensor", "bf16")
LINEAR_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512, help="corpus tokens run through the bf16 model")
    p.add_argument("--model", default=None, help="HF directory or .gguf (default: the SmolLM2 GGUF)")
    p.add_argument("--tiny", action="store_true", help="a random tiny Llama and random tokens (no download)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument(
        "--ppl", action="store_true", help="per-token perplexity of the eval's variants, with intervals"
    )
    p.add_argument("--ppl-tokens", type=int, default=4096, help="as rocm-attn eval --tokens")
    p.add_argument("--window", type=int, default=1024, help="as rocm-attn eval --window (stride = window)")
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        help="linear types (joined by +) kept bf16 in an extra PTPC row; repeatable",
    )
    p.add_argument("--sensitivity", action="store_true", help="add PTPC rows quantizing one linear type only")
    p.add_argument(
        "--lm-head",
        action="store_true",
        help="add PTPC rows with the lm_head quantized too, and with the lm_head alone quantized",
    )
    return p.parse_args(argv)


# ---- quantization pieces (the library's own functions; dequantized to float64 where one side stays exact)


def dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.double() * scale.double()


def per_tensor_quant(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    wq, scale = rocm_attn.quantize_weight_per_tensor(t)  # the same formula the per-tensor op uses for x
    return wq, scale


def subnormal_fraction(t: torch.Tensor, scale: torch.Tensor) -> float:
    """Fraction of nonzero elements whose scaled value is below fp8's smallest normal (2^-6 for e4m3fn,
    2^-7 for e4m3fnuz): those keep fewer than 3 mantissa bits."""
    min_normal = float(torch.finfo(fp8_dtype()).smallest_normal)
    scaled = (t.float() / scale).abs()
    nonzero = scaled > 0
    return float(((scaled < min_normal) & nonzero).sum()) / max(int(nonzero.sum()), 1)


def errors(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = y.double() - ref
    err = float(diff.norm() / ref.norm().clamp_min(1e-300))
    tok = (diff.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-300)).mean()
    return err, float(tok)


@torch.no_grad()
def measure_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> dict:
    """Errors of every recipe on one linear, x [M, K] and w [N, K] as the bf16 model has them."""
    x64, w64 = x.double(), w.double()
    b64 = bias.double() if bias is not None else 0.0
    ref = x64 @ w64.t() + b64

    xq_tok, xs_tok = per_token_quant_fp8_torch(x)
    xq_ten, xs_ten = per_tensor_quant(x)
    wq_ch, ws_ch = rocm_attn.quantize_weight_per_channel(w)
    wq_ten, ws_ten = rocm_attn.quantize_weight_per_tensor(w)
    outputs = {
        "ptpc": ptpc_scaled_mm_torch(xq_tok, xs_tok, wq_ch, ws_ch, bias, x.dtype),
        "per_tensor": fp8_per_tensor_linear_torch(x, wq_ten, ws_ten, bias),
        "w_channel": x64 @ dequant(wq_ch, ws_ch).t() + b64,
        "w_tensor": x64 @ dequant(wq_ten, ws_ten).t() + b64,
        "x_token": dequant(xq_tok, xs_tok) @ w64.t() + b64,
        "x_tensor": dequant(xq_ten, xs_ten) @ w64.t() + b64,
        "bf16": nn.functional.linear(x, w, bias),
    }
    row = {}
    for name, y in outputs.items():
        row[f"{name}_err"], row[f"{name}_tok_err"] = errors(y, ref)

    x32 = x.float()
    amax = x32.abs().amax(dim=-1)
    rms = x32.pow(2).mean(dim=-1).sqrt()
    row["outlier"] = float((amax / rms.clamp_min(1e-30)).mean())
    row["outlier_max"] = float((amax / rms.clamp_min(1e-30)).max())
    row["token_range"] = float(amax.max() / amax.median().clamp_min(1e-30))
    row["x_absmax"] = float(amax.max())
    row["x_subnormal_tensor"] = subnormal_fraction(x32, xs_ten)
    row["x_subnormal_token"] = subnormal_fraction(x32, xs_tok)
    row["w_subnormal_tensor"] = subnormal_fraction(w, ws_ten)
    row["w_subnormal_channel"] = subnormal_fraction(w, ws_ch)
    return row


def linear_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears rocm_attn.patch() replaces (its default skip list keeps lm_head / embeddings)."""
    out = []
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.Linear) and not any(p in name or p == leaf for p in DEFAULT_SKIP_MODULES):
            out.append((name, mod))
    return out


@torch.no_grad()
def measure_model(model: nn.Module, ids: torch.Tensor) -> list[dict]:
    rows, handles = [], []

    def hook(name):
        def fn(mod, args, _out):
            x = args[0].detach()
            row = {
                "name": name,
                "type": linear_type(name),
                "layer": layer_index(name),
                "in_features": mod.in_features,
                "out_features": mod.out_features,
            }
            row.update(measure_linear(x.reshape(-1, x.shape[-1]), mod.weight.detach(), mod.bias))
            rows.append(row)

        return fn

    for name, mod in quantized_linears(model):
        handles.append(mod.register_forward_hook(hook(name)))
    try:
        model(input_ids=ids[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per linear type: mean of each error and stat over the layers, worst layer's ptpc error,
    and on how many layers PTPC beats per-tensor (by err and by tok_err)."""
    out = []
    for t in dict.fromkeys(r["type"] for r in rows):
        group = [r for r in rows if r["type"] == t]
        s = {"type": t, "count": len(group)}
        for key in group[0]:
            if key.endswith("err") or key.startswith(("outlier", "token_range", "x_sub", "w_sub")):
                s[key] = sum(r[key] for r in group) / len(group)
        s["ptpc_err_max"] = max(r["ptpc_err"] for r in group)
        s["ptpc_better_err"] = sum(r["ptpc_err"] <= r["per_tensor_err"] for r in group)
        s["ptpc_better_tok_err"] = sum(r["ptpc_tok_err"] <= r["per_tensor_tok_err"] for r in group)
        out.append(s)
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| linear | n | ptpc err | per-tensor err | ptpc tok_err | per-tensor tok_err | w per-ch | w per-t "
        "| x per-tok | x per-t | bf16 | PTPC <= per-tensor (err / tok_err) | outlier max/rms | token range "
        "| x subnormal per-t / per-tok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['type']} | {s['count']} | {s['ptpc_err']:.4f} | {s['per_tensor_err']:.4f} "
            f"| {s['ptpc_tok_err']:.4f} | {s['per_tensor_tok_err']:.4f} | {s['w_channel_err']:.4f} "
            f"| {s['w_tensor_err']:.4f} | {s['x_token_err']:.4f} | {s['x_tensor_err']:.4f} "
            f"| {s['bf16_err']:.4f} "
            f"| {s['ptpc_better_err']}/{s['count']} / {s['ptpc_better_tok_err']}/{s['count']} "
            f"| {s['outlier']:.1f} | {s['token_range']:.1f} "
            f"| {100 * s['x_subnormal_tensor']:.2f}% / {100 * s['x_subnormal_token']:.2f}% |"
        )
    return "\n".join(lines)


def tiny_model_and_ids(tokens: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=max(tokens, 64),
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model, torch.randint(0, cfg.vocab_size, (tokens,))


def ptpc_variant(base, skip_types=()):
    """A PTPC copy of ``base`` with the linear types ``skip_types`` kept bf16 (patch's skip_modules)."""
    skip = tuple(DEFAULT_SKIP_MODULES) + tuple(skip_types)
    return rocm_attn.patch(copy.deepcopy(base), quantization="ptpc_fp8", compile=False, skip_modules=skip)


def ppl_variants(base, keep_groups: list[list[str]], sensitivity: bool, lm_head: bool = False) -> dict:
    """name -> model: bf16, the two eval recipes, PTPC keeping each group bf16, PTPC on one type only,
    and (lm_head) PTPC with the lm_head quantized too / alone (bench_e2e's rocm_attn_ptpc_lm_head recipe:
    skip_modules without "lm_head"; a tied lm_head gets its own FP8 copy, the embedding stays bf16)."""
    models = {"bf16": base}
    models["ptpc_fp8"] = rocm_attn.patch(copy.deepcopy(base), quantization="ptpc_fp8", compile=False)
    models["fp8_per_tensor"] = rocm_attn.patch(
        copy.deepcopy(base), quantization="fp8_per_tensor", compile=False
    )
    for group in keep_groups:
        models[f"ptpc_fp8 keep {'+'.join(group)} bf16"] = ptpc_variant(base, group)
    if sensitivity:
        for t in LINEAR_TYPES:
            models[f"ptpc_fp8 on {t} only"] = ptpc_variant(base, [o for o in LINEAR_TYPES if o != t])
    if lm_head:
        no_lm_head = tuple(m for m in DEFAULT_SKIP_MODULES if m != "lm_head")
        models["ptpc_fp8 + lm_head"] = rocm_attn.patch(
            copy.deepcopy(base), quantization="ptpc_fp8", compile=False, skip_modules=no_lm_head
        )
        models["ptpc_fp8 on lm_head only"] = rocm_attn.patch(
            copy.deepcopy(base), quantization="ptpc_fp8", compile=False, skip_modules=no_lm_head + LINEAR_TYPES
        )
    return models


@torch.no_grad()
def token_scores(ids: torch.Tensor, models: dict, window: int) -> dict:
    """Per scored token and model: NLL, KL(bf16 || model), argmax == bf16's; the windows, context and
    scored positions of ``rocm-attn eval --window W --stride W`` (rocm_attn.perplexity.windows)."""
    from rocm_attn.perplexity import windows

    out = {name: {"nll": [], "kl": [], "agree": []} for name in models}
    for begin, end, first in windows(ids.numel(), window, window):
        chunk = ids[begin:end][None]
        labels = chunk[0, first - begin :]
        ref_logp = None
        for name, model in models.items():  # bf16 first: the reference
            logits = model(input_ids=chunk, use_cache=False).logits[0, first - begin - 1 : -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            ref_logp = logp if ref_logp is None else ref_logp
            o = out[name]
            o["nll"].append(-logp.gather(-1, labels[:, None])[:, 0].double())
            o["kl"].append((ref_logp.exp() * (ref_logp - logp)).sum(-1).double())
            o["agree"].append((logp.argmax(-1) == ref_logp.argmax(-1)).double())
    return {name: {k: torch.cat(v) for k, v in o.items()} for name, o in out.items()}


def ppl_rows(scores: dict, models: dict, block: int) -> list[dict]:
    rows = []
    for name, s in scores.items():
        row = {
            "variant": name,
            "perplexity": math.exp(float(s["nll"].mean())),
            "mean_kl": float(s["kl"].mean()),
            "greedy_agreement": float(s["agree"].mean()),
        }
        row["vs_bf16_pct"], row["vs_bf16_lo"], row["vs_bf16_hi"] = ratio_ci(
            s["nll"], scores["bf16"]["nll"], block
        )
        if "fp8_per_tensor" in scores:
            pt = scores["fp8_per_tensor"]["nll"]
            row["vs_per_tensor_pct"], row["vs_per_tensor_lo"], row["vs_per_tensor_hi"] = ratio_ci(
                s["nll"], pt, block
            )
        report = getattr(models[name], "rocm_attn_report", None)
        row["linears_quantized"] = report.linears_replaced if report is not None else 0
        row["linear_weight_mib"] = linear_weight_bytes(models[name]) / 2**20
        rows.append(row)
    return rows


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the q/k/v/o/gate/up/down weights (+ scales, bias), bf16 or FP8Linear; not lm_head."""
    total = 0
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEAR_TYPES:
            tensors = [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def ppl_markdown(rows: list[dict]) -> str:
    lines = [
        "| variant | perplexity | vs bf16 (95% CI) | vs fp8_per_tensor (95% CI) | mean KL | agreement "
        "| linear weights MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs_pt = (
            f"{r['vs_per_tensor_pct']:+.2f}% ({r['vs_per_tensor_lo']:+.2f}, {r['vs_per_tensor_hi']:+.2f})"
            if "vs_per_tensor_pct" in r
            else ""
        )
        lines.append(
            f"| {r['variant']} | {r['perplexity']:.3f} "
            f"| {r['vs_bf16_pct']:+.2f}% ({r['vs_bf16_lo']:+.2f}, {r['vs_bf16_hi']:+.2f}) | {vs_pt} "
            f"| {r['mean_kl']:.5f} | {100 * r['greedy_agreement']:.1f}% | {r['linear_weight_mib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tokens < 2:
        raise SystemExit("accuracy_layers: --tokens must be >= 2")
    t0 = time.time()
    if args.tiny:
        model, ids = tiny_model_and_ids(args.tokens)
        source = "tiny random Llama (hidden 64, 2 layers), random tokens"
    else:
        from rocm_attn.demo import DEFAULT_GGUF, load
        from rocm_attn.perplexity import CORPUS_NAME, corpus_ids

        tok, model = load(args.model, torch.bfloat16, "cpu")
        ids = corpus_ids(tok, args.tokens)
        source = (
            f"{args.model or DEFAULT_GGUF} (bf16, CPU) on the first {args.tokens} tokens of the {CORPUS_NAME}"
        )
    rows = measure_model(model, ids)
    summary = summarize(rows)
    result = {
        "source": source,
        "tokens": int(ids.numel()),
        "fp8_dtype": str(fp8_dtype()),
        "fp8_max": fp8_max(),
        "torch": torch.__version__,
        "summary": summary,
        "layers": rows,
    }

    if args.ppl:
        keep_groups = [[t for t in g.split("+") if t] for g in args.keep]
        for t in (t for g in keep_groups for t in g):
            if t not in LINEAR_TYPES:
                raise SystemExit(f"accuracy_layers: --keep {t!r} is not one of {', '.join(LINEAR_TYPES)}")
        ppl_ids = (
            torch.randint(0, model.config.vocab_size, (args.ppl_tokens,))
            if args.tiny
            else corpus_ids(tok, args.ppl_tokens)
        )
        models = ppl_variants(model, keep_groups, args.sensitivity, args.lm_head)
        scores = token_scores(ppl_ids, models, args.window)
        result["ppl"] = {
            "tokens": args.ppl_tokens,
            "window": args.window,
            "stride": args.window,
            "scored_tokens": int(scores["bf16"]["nll"].numel()),
            "rows": ppl_rows(scores, models, block=64),
        }
    result["seconds"] = time.time() - t0

    print(f"{source}: relative error vs the float64 product, mean over layers of each type\n")
    print(markdown(summary))
    if "ppl" in result:
        p = result["ppl"]
        print(
            f"\nperplexity: first {p['tokens']} corpus tokens, window = stride = {p['window']}, "
            f"{p['scored_tokens']} scored tokens\n"
        )
        print(ppl_markdown(p["rows"]))
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=float))
        print(f"\nwrote {path}")
    ok = all(math.isfinite(r["ptpc_err"]) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
