"""The ``rocm-attn`` command line."""

from __future__ import annotations

import argparse
import json
import sys


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
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key not in ("ops", "attention_backends"):
            print(f"{key:>15}: {value}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rocm-attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="platform, fp8 format, and which kernel providers are usable")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=cmd_env)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
