"""Tensor parallel on CPU (issue 9, item 4, the CPU half): examples/tensor_parallel.py under torchrun,
2 processes, gloo, a tiny Llama loaded with tp_plan="auto" and compiled with backend="rocm_attn".
The same script runs on 2 GPUs with NCCL."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch.distributed as dist

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "tensor_parallel.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(),
        reason="torch.distributed with the gloo backend is not available in this torch build",
    ),
]


def test_tp_plan_auto_two_processes_gloo():
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(SCRIPT),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result line (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    ranks = result["ranks"]
    assert len(ranks) == 2
    for r in ranks:
        assert r["tp_eager_vs_eager"] < 1e-5  # the sharding itself is exact (fp32)
        # every eligible linear rewritten on the shards (lm_head is skipped), attention on the local heads
        assert (r["linear_rewritten"], r["linear_total"], r["attention_rewritten"]) == (14, 15, 2), r
        assert r["pass_errors"] == []
        assert r["scales_per_shard"], "FP8 weight scales are not per channel of the local shard"
        assert r["tp_rocm_attn_vs_eager"] < result["budget"], r
        assert r["tp_rocm_attn_vs_one_device_rocm_attn"] < result["budget"], r
    assert result["ok"] and proc.returncode == 0
