"""benchmarks/bench_attention.py on the CPU: the decode-heavy mixes are there for every backend and layout,
and the issue-4 ratio (TRITON_ATTN ms / ROCM_AITER_FA ms) is computed from the rows."""

import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_has_the_decode_heavy_mixes(bench):
    mixes = {name: specs for kind, name, specs, _ in bench.cases(quick=True) if kind == "mixed"}
    in_order = mixes["64 dec(4k) + 512 prefill"]
    reordered = mixes["512 prefill + 64 dec(4k) (reordered)"]
    assert sorted(in_order) == sorted(reordered) and in_order != reordered
    assert sum(q == 1 for _, q in in_order) == 64 and (0, 512) in in_order
    assert "64 dec(4k) + 2k prefill" in mixes
    assert {"TRITON_ATTN", "ROCM_AITER_FA", "ROCM_ATTN"} <= set(bench.BACKENDS)


def test_mix_ratios(bench):
    def row(case, layout, backend, ms):
        return {"kind": "mixed", "case": case, "layout": layout, "backend": backend, "ms": ms}

    rows = [row("m", "standard", "TRITON_ATTN", 0.72), row("m", "shuffled", "TRITON_ATTN", 1.2),
            row("m", "shuffled", "ROCM_AITER_FA", 0.6), row("m", "standard", "ROCM_ATTN", 0.5),
            {"kind": "mixed", "case": "m", "layout": "standard", "backend": "ROCM_AITER_FA", "note": "no"},
            {"kind": "decode", "case": "d", "layout": "shuffled", "backend": "ROCM_AITER_FA", "ms": 9.0},
            row("n", "standard", "TRITON_ATTN", 1.0)]  # no ROCM_AITER_FA time: no ratio
    ratios = bench.mix_ratios(rows)
    assert [r["case"] for r in ratios] == ["m", "n"]
    assert ratios[0]["x_vs_triton_standard"] == pytest.approx(1.2)
    assert ratios[0]["x_vs_triton_shuffled"] == 2.0
    assert ratios[0]["rocm_attn_ms"] == 0.5 and ratios[1]["x_vs_triton_standard"] is None
    text = bench.ratio_markdown(ratios)
    assert "| m | 0.600 | 1.20 | 2.00 | 0.500 |" in text and "| n | - | - | - | - |" in text
