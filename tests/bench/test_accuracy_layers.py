"""benchmarks/accuracy_layers.py (issue 7, accuracy by layer) on a tiny random Llama: the JSON lists every
quantized linear with sane errors, its per-token perplexity matches rocm-attn eval's code, and on an input
with one huge token (a massive activation, as SmolLM2's layer-11 down_proj has) per-tensor FP8 loses the
small tokens while PTPC does not."""

import importlib.util
import json
import math
import pathlib

import torch
from torch import nn

from rocm_attn.perplexity import evaluate

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy_layers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy_layers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_lists_every_linear_with_sane_errors(tmp_path):
    acc = load_script()
    out = tmp_path / "acc.json"
    assert (
        acc.main(
            [
                "--tiny",
                "--tokens",
                "48",
                "--ppl",
                "--ppl-tokens",
                "64",
                "--window",
                "32",
                "--keep",
                "down_proj",
                "--lm-head",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())

    model, _ = acc.tiny_model_and_ids(8)
    expected = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert {r["name"] for r in result["layers"]} == expected and len(result["layers"]) == len(expected)
    for r in result["layers"]:
        for recipe in acc.RECIPES:
            assert math.isfinite(r[f"{recipe}_err"]) and math.isfinite(r[f"{recipe}_tok_err"]), (
                r["name"],
                recipe,
            )
        # 3 mantissa bits: ~2.5% per quantized side on randn-like data; bf16 (8 bits) is far below
        assert 1e-2 < r["ptpc_err"] < 5e-2, r
        assert 1e-2 < r["per_tensor_err"] < 5e-2, r
        assert r["bf16_err"] < 5e-3 < r["w_channel_err"] < r["ptpc_err"], r
        assert r["x_token_err"] < r["ptpc_err"], r
    assert [s["type"] for s in result["summary"]] == list(acc.LINEAR_TYPES)
    assert all(s["count"] == 2 for s in result["summary"])

    rows = {r["variant"]: r for r in result["ppl"]["rows"]}
    assert set(rows) == {"bf16", "ptpc_fp8", "fp8_per_tensor", "ptpc_fp8 keep down_proj bf16",
                         "ptpc_fp8 + lm_head", "ptpc_fp8 on lm_head only"}
    assert rows["bf16"]["vs_bf16_pct"] == 0 and rows["bf16"]["mean_kl"] == 0
    assert (
        rows["ptpc_fp8"]["linears_quantized"] == 14
        and rows["ptpc_fp8 keep down_proj bf16"]["linears_quantized"] == 12
    )
    # --lm-head: the tied lm_head gets its own FP8 copy (linear_weight_mib counts the 7 linear types only)
    assert rows["ptpc_fp8 + lm_head"]["linears_quantized"] == 15
    assert rows["ptpc_fp8 on lm_head only"]["linears_quantized"] == 1
    assert rows["ptpc_fp8 on lm_head only"]["linear_weight_mib"] == rows["bf16"]["linear_weight_mib"]
    assert rows["ptpc_fp8 on lm_head only"]["mean_kl"] > 0
    # fp8 weights (+ fp32 scales) take about half the bf16 bytes; keeping down_proj bf16 costs its half back
    assert rows["ptpc_fp8"]["linear_weight_mib"] < 0.6 * rows["bf16"]["linear_weight_mib"]
    assert rows["ptpc_fp8"]["linear_weight_mib"] < rows["ptpc_fp8 keep down_proj bf16"]["linear_weight_mib"]


def test_per_token_scores_reproduce_the_eval():
    acc = load_script()
    model, ids = acc.tiny_model_and_ids(40)
    models = acc.ppl_variants(model, [], sensitivity=False)
    scores = acc.token_scores(ids, models, window=16)
    by_eval = {r["variant"]: r for r in evaluate(ids, models, 16, 16)["rows"]}
    for name, s in scores.items():
        # the eval sums in fp32, these in fp64
        assert math.isclose(math.exp(float(s["nll"].mean())), by_eval[name]["perplexity"], rel_tol=1e-6), name
        assert math.isclose(float(s["kl"].mean()), by_eval[name]["mean_kl"], rel_tol=1e-4), name
        assert math.isclose(float(s["agree"].mean()), by_eval[name]["greedy_agreement"]), name


def test_one_huge_token_hurts_per_tensor_not_ptpc():
    acc = load_script()
    x = torch.randn(64, 256)
    x[0] *= 20000.0  # a massive activation on one token sets the per-tensor scale
    w = torch.randn(128, 256) / 16
    row = acc.measure_linear(x.bfloat16(), w.bfloat16(), None)
    assert row["x_subnormal_tensor"] > 0.9 and row["x_subnormal_token"] < 0.01, row
    # small tokens: per-tensor loses most of their mantissa bits, PTPC keeps e4m3's ~2.5% per side
    assert row["per_tensor_tok_err"] > 2 * row["ptpc_tok_err"], row
    assert row["ptpc_tok_err"] < 5e-2 and row["token_range"] > 10000, row


def test_ratio_interval():
    acc = load_script()
    a = torch.rand(640, dtype=torch.float64) * 5
    assert acc.ratio_ci(a, a) == (0.0, 0.0, 0.0)
    mid, lo, hi = acc.ratio_ci(a + 0.01, a)
    assert (
        math.isclose(mid, 100 * math.expm1(0.01), rel_tol=1e-9)
        and math.isclose(lo, mid)
        and math.isclose(hi, mid)
    )
    mid, lo, hi = acc.ratio_ci(a + torch.randn(640, dtype=torch.float64) * 0.1, a)
    assert lo < mid < hi and hi - lo < 5
