"""``rocm-attn bench`` and ``rocm-attn eval``.

    rocm-attn bench [kernels|e2e|serving|all] --out DIR [--quick] [--layers N] [--models M] [--variants V]
                    [--phases P] [--iters N] [--rounds N] [--cpu-smoke]
    rocm-attn eval [--tokens N] [--window W] [--stride S] [--out DIR]

``bench`` runs the scripts of the repository's ``benchmarks/`` folder (it needs a source checkout: an
editable install, or --benchmarks-dir), one subprocess each, with a progress bar; each script writes its
JSON into DIR, its output goes to DIR/<script>.log. Then DIR/results.md gets one table per script and
DIR/<script>.png a bar chart (matplotlib; skipped with a note where it is not installed). Kernel scripts
need a GPU: without one they are listed as skipped.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

SUITES = {
    "kernels": ["bench_linear", "bench_attention", "bench_mla", "bench_compile"],
    "e2e": ["bench_e2e"],
    "serving": ["bench_serving", "bench_serving_cb"],
}
SUITES["all"] = SUITES["kernels"] + SUITES["e2e"] + SUITES["serving"]
# scripts that run on a CPU with --cpu-smoke (the others need a GPU)
CPU_SMOKE = {"bench_e2e", "bench_serving", "bench_serving_cb"}
# per script: (row keys that name a bar group, row key that names the bar, the value plotted, its axis label)
PLOTS = {
    "bench_linear": (("K", "N", "M"), None, "vs_bf16.ptpc_linear", "ptpc_linear x bf16"),
    "bench_attention": (("case", "layout"), "backend", "vs_baseline", "x SDPA"),
    "bench_mla": (("case", "batch", "ctx", "S"), "impl", "gbs", "GB/s"),
    "bench_compile": (("backend",), None, "tokens_per_s", "prefill tokens/s"),
    "bench_e2e": (("model", "case"), "variant", "tokens_per_s", "tokens/s"),
    "bench_serving": (("mix",), "backend", "tokens_per_s", "new tokens/s (1 layer)"),
    "bench_serving_cb": (("workload",), "variant", "tokens_per_s", "tokens/s (prompt + generated)"),
}


def benchmarks_dir(given: str | None = None) -> pathlib.Path:
    path = pathlib.Path(given) if given else pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    if not (path / "bench_e2e.py").is_file():
        raise SystemExit(
            f"rocm-attn bench: no benchmark scripts in {path}; run from a source checkout "
            "(pip install -e .) or pass --benchmarks-dir"
        )
    return path


def script_args(name: str, args) -> list[str]:
    """The options a script takes from the bench command line."""
    extra = []
    if args.quick and name in ("bench_linear", "bench_attention"):
        extra.append("--quick")
    if args.layers and name in ("bench_e2e", "bench_compile", "bench_serving_cb"):
        extra += ["--layers", str(args.layers)]
    if args.cpu_smoke and name in CPU_SMOKE:
        extra.append("--cpu-smoke")
    if args.models and name == "bench_e2e":
        extra += ["--models", args.models]
    if args.variants and name == "bench_e2e":
        extra += ["--variants", args.variants]
    if args.phases and name == "bench_e2e":
        extra += ["--phases", args.phases]
    if args.iters and name in ("bench_e2e", "bench_serving", "bench_serving_cb", "bench_compile"):
        extra += ["--iters", str(args.iters)]
    if args.rounds and name == "bench_e2e":
        extra += ["--rounds", str(args.rounds)]
    return extra


def run_scripts(names: list[str], args, out: pathlib.Path) -> list[dict]:
    import torch

    folder = benchmarks_dir(args.benchmarks_dir)
    has_gpu = torch.cuda.is_available()
    runs = []
    bar = _bar(len(names))
    for name in names:
        run = {"script": name, "json": str(out / f"{name}.json"), "log": str(out / f"{name}.log")}
        if not (has_gpu or (args.cpu_smoke and name in CPU_SMOKE)):
            run["status"] = "skipped: needs a GPU" + (" (or --cpu-smoke)" if name in CPU_SMOKE else "")
        else:
            cmd = [sys.executable, str(folder / f"{name}.py"), "--out", run["json"], *script_args(name, args)]
            run["command"] = " ".join(cmd[1:])
            _describe(bar, name)
            t0 = time.time()
            with open(run["log"], "w") as log:
                proc = subprocess.run(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=folder.parent,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            run["seconds"] = time.time() - t0
            run["status"] = (
                "ok"
                if proc.returncode == 0 and os.path.isfile(run["json"])
                else f"failed (exit {proc.returncode}): see {run['log']}"
            )
        _step(bar, f"{name}: {run['status']}")
        runs.append(run)
    if bar is not None:
        bar.close()
    return runs


def flatten(row: dict, prefix: str = "") -> dict:
    """{"ms": {"bf16": 1}} -> {"ms.bf16": 1}"""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def table(rows: list[dict]) -> str:
    """A markdown table of every scalar field (nested dicts flattened) of the rows."""
    rows = [flatten(r) for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def plot(name: str, rows: list[dict], path: pathlib.Path) -> str | None:
    """A grouped bar chart of the script's main figure; returns why not, or None when written."""
    if name not in PLOTS:
        return "no plot defined"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'rocm-attn[bench]')"
    group_keys, series_key, metric, label = PLOTS[name]
    points = []
    for r in map(flatten, rows):
        if isinstance(r.get(metric), (int, float)):
            group = " ".join(str(r[k]) for k in group_keys if r.get(k) is not None)
            points.append((group, str(r.get(series_key, "")) if series_key else "", float(r[metric])))
    if not points:
        return f"no row has {metric}"
    groups = list(dict.fromkeys(p[0] for p in points))
    series = list(dict.fromkeys(p[1] for p in points))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.5))
    for i, s in enumerate(series):
        values = {g: v for g, ss, v in points if ss == s}
        xs = [j + i * width for j, g in enumerate(groups) if g in values]
        ax.bar(xs, [values[g] for g in groups if g in values], width, label=s or metric)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(name)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def report(runs: list[dict], out: pathlib.Path) -> pathlib.Path:
    """results.md (tables) and <script>.png (plots) from the JSON the scripts wrote."""
    lines = ["# rocm-attn bench", ""]
    for run in runs:
        lines += [f"## {run['script']}", "", f"status: {run['status']}"]
        if run["status"] != "ok":
            lines.append("")
            continue
        with open(run["json"]) as f:
            result = json.load(f)
        lines += [
            f"command: `{result.get('command') or run['command']}`",
            f"device: {result.get('device', '?')}, torch {result.get('torch', '?')}",
            "",
        ]
        rows = result.get("rows") or []
        lines.append(result.get("table") or table(rows))
        why_not = plot(run["script"], rows, out / f"{run['script']}.png")
        lines += [
            "",
            f"![{run['script']}]({run['script']}.png)" if why_not is None else f"plot: {why_not}",
            "",
        ]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def cmd_bench(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = run_scripts(SUITES[args.suite], args, out)
    md = report(runs, out)
    with open(out / "runs.json", "w") as f:
        json.dump(runs, f, indent=1)
    for run in runs:
        print(f"{run['script']:<16} {run['status']}")
    print(f"wrote {md}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in runs) else 1


def cmd_eval(args) -> int:
    import torch

    from .perplexity import compare_runs, markdown, run_eval

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.against and not pathlib.Path(args.against).is_file():  # before minutes of scoring, not after
        raise FileNotFoundError(f"rocm-attn eval --against {args.against}: no such file (an eval_tokens.json)")
    if args.device is not None:
        torch.device(args.device)  # a malformed device string fails here, in one line
    result = run_eval(
        args.model,
        args.tokens,
        args.window,
        args.stride,
        variants,
        dtype,
        args.device,
        show_progress=not args.json,
    )
    result["command"] = (
        f"rocm-attn eval --tokens {args.tokens} --window {args.window} --stride {args.stride} "
        f"--variants {','.join(variants)} --dtype {args.dtype}"
        + (f" --model {args.model}" if args.model else "")
        + (f" --device {args.device}" if args.device else "")
    )
    tokens = {key: result[key] for key in ("tokens", "window", "stride", "scored_tokens", "device", "token_nll")}
    del result["token_nll"]  # per-token NLLs go to eval_tokens.json (--against reads them)
    if args.against:
        other = json.loads(pathlib.Path(args.against).read_text())
        result["against"] = {"path": args.against, "device": other.get("device"),
                             "rows": compare_runs(tokens, other)}
    text = markdown(result)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=1))
        (out / "eval.md").write_text(f"command: `{result['command']}`\n\n{text}\n")
        (out / "eval_tokens.json").write_text(json.dumps(tokens))
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def _bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (extra "bench"): plain lines instead
        return None
    return tqdm(total=total, desc="bench", unit="script")


def _describe(bar, name: str) -> None:
    if bar is None:
        print(f"running {name} ...", flush=True)
    else:
        bar.set_description(f"bench: {name}")


def _step(bar, message: str) -> None:
    if bar is None:
        print(message, flush=True)
    else:
        bar.write(message)
        bar.update(1)


def add_parsers(sub) -> None:
    """The two subcommands, for rocm_attn.cli."""
    from .cli import positive_int
    from .perplexity import VARIANTS

    bench = sub.add_parser(
        "bench", help="run the benchmarks: JSON, a markdown table and PNG plots under --out"
    )
    bench.add_argument("suite", nargs="?", default="all", choices=list(SUITES))
    bench.add_argument("--out", default="results", help="results directory")
    bench.add_argument("--quick", action="store_true", help="the kernel benchmarks' quick subsets")
    bench.add_argument("--layers", type=positive_int, default=None, help="cut the e2e / compile models to N layers")
    bench.add_argument("--cpu-smoke", action="store_true", help="e2e and serving on tiny shapes on the CPU")
    bench.add_argument(
        "--benchmarks-dir", default=None, help="the benchmarks/ folder (default: the checkout's)"
    )
    bench.add_argument("--models", default=None, help="e2e: comma-separated llama, qwen3")
    bench.add_argument(
        "--variants", default=None, help="e2e: comma-separated variants (see benchmarks/bench_e2e.py)"
    )
    bench.add_argument("--iters", type=positive_int, default=None, help="e2e, serving, compile: timed calls")
    bench.add_argument("--rounds", type=positive_int, default=None,
                       help="e2e: > 1 times the prefill variants round-robin, N rounds (needs --phases prefill)")
    bench.add_argument("--phases", default=None,
                       help="e2e: prefill and/or decode, or weights (weight bytes only; see bench_e2e.py)")
    bench.set_defaults(func=cmd_bench)
    ev = sub.add_parser(
        "eval",
        help="perplexity, greedy agreement and KL of bf16 vs FP8 variants on SmolLM2 "
        "and an English news corpus",
    )
    ev.add_argument(
        "--model", default=None, help="a local HF model dir or .gguf (default: SmolLM2-135M-Instruct)"
    )
    ev.add_argument("--tokens", type=int, default=4096, help="tokens of the corpus to score")
    ev.add_argument("--window", type=positive_int, default=512, help="tokens per forward")
    ev.add_argument("--stride", type=positive_int, default=512, help="tokens between window starts")
    ev.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated from {', '.join(VARIANTS)}"
    )
    ev.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ev.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ev.add_argument("--out", default=None, help="write eval.json, eval.md and eval_tokens.json here")
    ev.add_argument(
        "--against",
        default=None,
        help="eval_tokens.json of another run of the same command (e.g. on the CPU): report each "
        "variant's paired perplexity change against it, with a 95%% interval",
    )
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)
