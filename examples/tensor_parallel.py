"""Tensor parallel: a HF model loaded with tp_plan="auto", compiled with backend="rocm_attn".

    torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py                   # 2 GPUs, NCCL
    torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py --model DIR        # a real model
    torchrun --standalone --nproc-per-node 2 examples/tensor_parallel.py --device cpu      # CPU, gloo

Each rank holds a shard of every linear (q/k/v, gate/up by output channel; o/down by input channel)
and runs attention on its local heads; HF's all-reduces stay in the graph. The rewrite quantizes each
rank's shard once at compile time, so the FP8 weight scales are per channel *of the shard*.

Checks (rank 0 prints one JSON line, exit status 1 on a failure):
  - TP + rocm_attn logits vs the one-device eager model: within the FP8 budget;
  - TP + rocm_attn vs the one-device rocm_attn compile: the same budget (both quantize);
  - every rank's FP8 weight scales equal per-channel scales of its local shards (o_proj: of its
    input-channel slice, not of the whole weight).
--bench times a prefill forward of the TP model and of the one-device model (GPU only: on CPU
the numbers mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist

FP8_BUDGET = 6e-2  # rel. error of logits, random tiny Llama through PTPC FP8 (tests use the same)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model directory (default: a tiny random Llama)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"]
    )
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--seq-len", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--budget", type=float, default=FP8_BUDGET)
    p.add_argument("--bench", action="store_true")
    p.add_argument(
        "--llama8b-layers", type=int, default=0, metavar="L",
        help="instead of the tiny model: random weights of the Llama-3.1-8B shapes, cut to L layers (for --bench)",
    )
    return p.parse_args(argv)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_llama_dir(llama8b_layers: int = 0) -> str:
    """Rank 0 writes a random Llama to a temp directory: tiny (4 query / 2 KV heads: 2 / 1 per rank), or
    the Llama-3.1-8B shapes (32 / 8 heads, 4096 hidden, 14336 MLP) cut to `llama8b_layers` layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = [None]
    if dist.get_rank() == 0:
        torch.manual_seed(0)
        if llama8b_layers:
            shapes = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=llama8b_layers,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                          max_position_embeddings=8192, rope_theta=500000.0)
        else:
            shapes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
        path[0] = tempfile.mkdtemp(prefix="rocm_attn_tp_")
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # fast random init
            model = LlamaForCausalLM(LlamaConfig(**shapes))
        (model.to(torch.bfloat16) if llama8b_layers else model).save_pretrained(path[0])
        del model
    dist.broadcast_object_list(path, src=0)
    return path[0]


def record_weight_scales():
    """Wrap the rewrite's weight quantization: returns the list it appends (weight [N, K], scale) to."""
    from rocm_attn.patterns import linear

    seen, quantize = [], linear.quantize

    def recording(weight_nk, quantization):
        wq, scale = quantize(weight_nk, quantization)
        seen.append((weight_nk.detach().clone(), scale.clone()))
        return wq, scale

    linear.quantize = recording
    return seen


def scales_are_per_shard(model, seen) -> bool:
    """o_proj (sharded by input channel) of layer 0: this rank's scale is its local slice's row amax."""
    from rocm_attn import quantize_weight_per_channel

    w = model.model.layers[0].self_attn.o_proj.weight
    local, full = w.to_local(), w.full_tensor()
    want = quantize_weight_per_channel(local)[1]
    matches = [s for wt, s in seen if wt.shape == local.shape and torch.equal(wt, local)]
    differs_from_full = not torch.equal(want, quantize_weight_per_channel(full)[1])
    return len(matches) == 1 and torch.equal(matches[0], want) and differs_from_full


def forward_time(fn, ids, reps=10) -> float:
    fn(ids)
    if ids.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(ids)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM

    import rocm_attn  # noqa: F401  (registers the ops and the backend)

    if args.device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    )
    path = args.model or random_llama_dir(args.llama8b_layers)

    tp_model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=dtype).eval()
    one_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    vocab = one_model.config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(1, vocab, (args.batch, args.seq_len)).to(device)

    from rocm_attn.passes import report as report_mod

    seen = record_weight_scales()
    report_mod.recent.clear()
    with torch.no_grad():
        eager = one_model(ids, use_cache=False).logits
        tp_eager = tp_model(ids, use_cache=False).logits
        tp_fn = torch.compile(lambda x: tp_model(x, use_cache=False).logits, backend="rocm_attn")
        first_report = len(report_mod.recent)
        tp_out = tp_fn(ids)
        tp_reports = report_mod.recent[first_report:]  # one per graph the TP compile captured
        per_shard = scales_are_per_shard(tp_model, seen)
        torch._dynamo.reset()
        one_fn = torch.compile(lambda x: one_model(x, use_cache=False).logits, backend="rocm_attn")
        one_out = one_fn(ids)
        timing = {}
        if args.bench:
            timing = {
                "tp_ms": 1e3 * forward_time(tp_fn, ids),
                "one_device_ms": 1e3 * forward_time(one_fn, ids),
            }

    result = {
        "rank": rank,
        "world": world,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "tp_eager_vs_eager": rel_err(tp_eager, eager),
        "tp_rocm_attn_vs_eager": rel_err(tp_out, eager),
        "tp_rocm_attn_vs_one_device_rocm_attn": rel_err(tp_out, one_out),
        "one_device_rocm_attn_vs_eager": rel_err(one_out, eager),
        "graphs": len(tp_reports),
        "linear_rewritten": sum(r.linear_rewritten for r in tp_reports),
        "linear_total": sum(r.linear_total for r in tp_reports),
        "attention_rewritten": sum(r.attention_rewritten for r in tp_reports),
        "pass_errors": [e for r in tp_reports for e in r.errors],
        "scales_per_shard": per_shard,
        **timing,
    }
    results = [None] * world
    dist.all_gather_object(results, result)
    ok = all(
        r["tp_rocm_attn_vs_eager"] < args.budget
        and r["tp_rocm_attn_vs_one_device_rocm_attn"] < args.budget
        and r["scales_per_shard"]
        and not r["pass_errors"]
        and r["linear_rewritten"]
        for r in results
    )
    if rank == 0:
        if not ok:  # say what the TP compile saw
            for r in tp_reports:
                print(r, file=sys.stderr)
        print(json.dumps({"ok": ok, "budget": args.budget, "ranks": results}))
        if args.model is None:
            shutil.rmtree(path, ignore_errors=True)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
