"""benchmarks/bench_mla.py without a GPU: the --tune grid covers every default decode config and only valid
tiles; --resources compiles a config for sm_90 here and reports its registers and shared memory."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import triton
from rocm_attn.kernels.triton_kernels import mla_decode as md

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mla.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_mla", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tune_grid_covers_the_defaults_with_valid_tiles():
    grid = load_script().tune_grid()
    assert len(set(grid)) == len(grid)
    # --tune measures every config the launcher may pick
    assert set(md.DECODE_CONFIGS + md.TMA_CONFIGS + md.GLUON_CONFIGS) <= set(grid)
    for cfg in grid:
        md._check_config(cfg, 512)


def test_resources_on_sm90_without_a_gpu():
    if not (pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump").exists():
        pytest.skip("this Triton has no bundled CUDA tools")
    # in a fresh process without TRITON_INTERPRET: in this one, Triton's own jit helpers (tl.cdiv) were built
    # for the interpreter, and whether a real compile then works depended on which tests ran before
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('bench_mla', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            "from rocm_attn.kernels.triton_kernels.mla_decode import DecodeConfig; "
            "print(m.resources([DecodeConfig(16, 16, None, None, 4, 2)]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    table = run.stdout.strip()
    row = table.splitlines()[-1].split("|")
    assert row[1].strip() == "h16 n16 vL kL w4 s2", table
    regs, spill, smem_kb = int(row[2]), int(row[3]), int(row[4])
    assert 32 <= regs <= 255 and spill >= 0 and 8 <= smem_kb <= 227 and row[6].strip() == "mma.sync"
