"""Readable graph dumps: dump_dir/graph_<i>/<nn>_<stage>.py, report.json, and tlparse artifacts."""

from __future__ import annotations

import json
import logging
import os

import torch.fx as fx

log = logging.getLogger("rocm_attn")


def graph_code(gm: fx.GraphModule) -> str:
    try:
        return gm.print_readable(print_output=False)
    except Exception:  # print_readable needs node metadata some passes do not set
        return gm.code


def dump_graph(gm: fx.GraphModule, dump_dir: str | None, graph_index: int, step: int, stage: str) -> None:
    """Write one stage of one graph to dump_dir (if set) and to torch's structured trace (tlparse)."""
    code = None
    try:
        from torch._logging import trace_structured

        trace_structured(
            "artifact",
            metadata_fn=lambda: {
                "name": f"rocm_attn_graph{graph_index}_{step:02d}_{stage}",
                "encoding": "string",
            },
            payload_fn=lambda: code if code is not None else graph_code(gm),
        )
    except Exception as e:  # tracing is best effort
        log.debug("rocm_attn: structured trace failed: %s", e)
    if not dump_dir:
        return
    code = graph_code(gm)
    path = os.path.join(dump_dir, f"graph_{graph_index}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, f"{step:02d}_{stage}.py"), "w") as f:
        f.write(code)


def dump_report(report, dump_dir: str | None) -> None:
    if not dump_dir:
        return
    os.makedirs(dump_dir, exist_ok=True)
    with open(os.path.join(dump_dir, "report.json"), "w") as f:
        json.dump(report.to_dict(), f, indent=2)
