"""The GPU-only benchmark scripts of session 9 parse their arguments and, without a GPU, stop with a message
that says so (instead of a traceback deep in CUDA code)."""

import importlib.util
import pathlib

import pytest
import torch

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_ab_pass_without_a_gpu():
    ab_pass = load("ab_pass")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ab_pass.main(["--pass", "rope_tables"])
    with pytest.raises(SystemExit) as exc:  # a pass that does not exist: argparse's error (exit 2)
        ab_pass.main(["--pass", "no_such_pass"])
    assert exc.value.code == 2


def test_fp8_accumulation_markdown_reads_its_json():
    acc = load("fp8_accumulation")
    speed = {"M": 1024, "K": 4096, "N": 4096, "bf16_us": 48.0, "cublas_prec_us": 32.0, "cublas_fast_us": 30.0}
    speed.update({f"{m}_us": 40.0 for m in acc.MODES})
    accuracy = {"K": 4096, "kind": "positive", "cublas_prec": 1.9e-3, "cublas_fast": 6.7e-2}
    accuracy.update({m: 2e-3 for m in acc.MODES})
    table = acc.markdown({"speed": [speed], "accuracy": [accuracy]})
    assert "| 1024 | 4096 | 4096 | 48.0 | 32.0 (1.50x) | 30.0 (1.60x) | 40.0 (1.20x)" in table
    assert "| 4096 | positive | 1.9e-03 | 6.7e-02 | 2.0e-03" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_profile_host_without_a_gpu():
    profile_host = load("profile_host")
    with pytest.raises(SystemExit, match="needs a GPU"):
        profile_host.main(["--variant", "inductor", "--shape", "2x64"])
    with pytest.raises(SystemExit) as exc:  # a model bench_e2e does not know: argparse's error (exit 2)
        profile_host.main(["--model", "gpt2"])
    assert exc.value.code == 2
