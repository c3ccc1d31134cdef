"""Soak: many random mixed attention steps on one paged cache, with sequences started, grown and freed.

    python benchmarks/soak_attention.py --steps 10000 --check-every 100                 # GPU (issue 9)
    python benchmarks/soak_attention.py --device cpu --steps 300 --check-every 25 --tiny # CPU smoke

Each step picks a random batch: new sequences (prefill), live ones growing by one token (decode)
or by several (extend); finished sequences are freed. Blocks come from the shared BlockAllocator,
so freed blocks are reused by later sequences. Every ``--check-every`` steps:
  - the step's output is compared with a dense float64 reference over each sequence's whole
    history (kept on the side), and
  - every live sequence's cached K/V is read back through its block table and compared with its
    history (a block handed to two sequences would show here).
At the end every sequence is freed and the allocator must hold all its blocks again (no leaks).
Exit status 1 on any mismatch or leak. ``--json PATH`` writes the summary; ``--profile`` adds the
mean milliseconds per step of each phase (synchronising the device between phases).

Per-step cost outside the kernels is kept small so that 10,000 GPU steps take minutes: q/k/v are
drawn on the device, each sequence's history lives in a preallocated row of one buffer (written
in place, never concatenated), and the cache check reads every live sequence back in one gather.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time

import torch
from rocm_attn.kernels.attention_metadata import build_metadata_from_allocator

import rocm_attn
from rocm_attn.testing import reference_attention, rel_err

# max rel. error of one checked step vs the float64 reference, per cache dtype
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--check-every", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--layout", default="standard", choices=["standard", "shuffled"])
    p.add_argument("--backend", default="TRITON_ATTN")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=2048)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="query heads per KV head")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--max-seqs", type=int, default=64, help="live sequences at most")
    p.add_argument("--max-new", type=int, default=256, help="new tokens per prefill/extend at most")
    p.add_argument("--max-len", type=int, default=4096, help="a sequence is freed once this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU-sized shapes (96 cache slots, 2x2 heads, D 16)")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--profile", action="store_true", help="report ms per step of each phase (syncs between them)"
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.kv_heads, args.group, args.head_dim = 2, 2, 16
        # the shuffled layout needs blocks of a multiple of x = 16 bytes / element (8 for 16-bit types)
        args.block_size, args.num_blocks = (8, 12) if args.layout == "shuffled" else (4, 24)
        args.max_seqs, args.max_new, args.max_len = 5, 9, 40
    if args.steps < 1 or args.check_every < 1:
        p.error("--steps and --check-every must be >= 1")
    return args


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.gen = torch.Generator(device=args.device).manual_seed(args.seed)
        self.dtype = getattr(torch, args.dtype)
        self.cache = rocm_attn.KVCache(
            args.num_blocks,
            args.block_size,
            args.kv_heads,
            args.head_dim,
            self.dtype,
            args.layout,
            args.device,
        )
        self.alloc = self.cache.allocator
        # Each live sequence's K/V history (what the cache must hold) in one row of a preallocated
        # buffer: a sequence is freed once max_len long, so it never holds more than max_len - 1 +
        # max_new tokens, and at most max_seqs sequences are live.
        capacity = args.max_len - 1 + args.max_new
        shape = (args.max_seqs, capacity, args.kv_heads, args.head_dim)
        self.hist_k = torch.zeros(shape, dtype=self.dtype, device=args.device)
        self.hist_v = torch.zeros(shape, dtype=self.dtype, device=args.device)
        self.row: dict[int, int] = {}  # live seq id -> its history row
        self.free_rows = list(range(args.max_seqs - 1, -1, -1))
        self.next_id = 0
        self.phase_seconds: dict[str, float] = {}
        self.stats = dict(
            steps=0,
            checks=0,
            tokens=0,
            started=0,
            freed=0,
            full_events=0,
            max_rel_err=0.0,
            max_cache_err=0.0,
            mismatches=0,
        )

    @contextlib.contextmanager
    def phase(self, name):
        """Add the time spent in the block to phase_seconds[name] (only with --profile: it syncs)."""
        if not self.args.profile:
            yield
            return
        sync = torch.cuda.synchronize if self.cache.device.type == "cuda" else lambda: None
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - t0

    def randn(self, *shape):
        return torch.randn(shape, generator=self.gen, dtype=self.dtype, device=self.args.device)

    def history(self, seq_id):
        """(k, v) [len, Hkv, D] of a live sequence: views of its history row."""
        row, n = self.row[seq_id], self.alloc.seq_len(seq_id)
        return self.hist_k[row, :n], self.hist_v[row, :n]

    def blocks_needed(self, seq_id, new_tokens):
        have = self.alloc.seq_len(seq_id) if seq_id in self.alloc else 0
        owned = len(self.alloc.blocks(seq_id)) if seq_id in self.alloc else 0
        return -(-(have + new_tokens) // self.args.block_size) - owned

    def free(self, seq_id):
        self.alloc.free(seq_id)
        self.free_rows.append(self.row.pop(seq_id))
        self.stats["freed"] += 1

    def plan(self):
        """This step's (seq ids, new-token counts): grow some live sequences, start some new ones,
        freeing sequences (finished first, then the oldest) until the step fits the cache."""
        a, rng = self.args, self.rng
        for s in [s for s in self.row if self.alloc.seq_len(s) >= a.max_len]:
            self.free(s)
        live = list(self.row)
        batch = []
        for s in rng.sample(live, k=rng.randint(0, len(live))):
            batch.append((s, 1 if rng.random() < 0.7 else rng.randint(2, a.max_new)))
        for _ in range(rng.randint(0, min(3, max(0, a.max_seqs - len(live))))):
            batch.append((None, rng.randint(1, a.max_new)))
        if not batch:
            batch.append((rng.choice(live), 1) if live else (None, rng.randint(1, a.max_new)))
        while True:
            need = sum(self.blocks_needed(s, n) if s is not None else -(-n // a.block_size) for s, n in batch)
            if need <= self.alloc.num_free_blocks:
                break
            self.stats["full_events"] += 1
            victims = [s for s in self.row if s not in {b for b, _ in batch}] or [
                b for b, _ in batch if b is not None
            ]
            if not victims:  # only new sequences left and still too big: shrink the step
                batch = batch[:-1] if len(batch) > 1 else [(None, 1)]
                continue
            self.free(victims[0])
            batch = [(s, n) for s, n in batch if s is None or s in self.row]
        ids = []
        for s, n in batch:
            if s is None:
                s, self.next_id = self.next_id, self.next_id + 1
                self.row[s] = self.free_rows.pop()
                self.stats["started"] += 1
            ids.append((s, n))
        return ids

    def step(self, check: bool):
        a = self.args
        with self.phase("plan + metadata"):
            batch = self.plan()
            seq_ids, query_lens = [s for s, _ in batch], [n for _, n in batch]
            md = build_metadata_from_allocator(self.alloc, seq_ids, query_lens, a.device)
        with self.phase("random q/k/v"):
            T = sum(query_lens)
            q = self.randn(T, a.kv_heads * a.group, a.head_dim)
            k, v = self.randn(T, a.kv_heads, a.head_dim), self.randn(T, a.kv_heads, a.head_dim)
        scale = 1.0 / math.sqrt(a.head_dim)
        with self.phase("attention"):
            out = rocm_attn.attention(
                q,
                k,
                v,
                self.cache,
                md.query_start_loc,
                md.seq_lens,
                md.block_table,
                md.slot_mapping,
                scale=scale,
                backend=a.backend,
                metadata=md,
            )
        with self.phase("history write"):
            start = 0
            for s, n, c in zip(seq_ids, query_lens, md.context_lens, strict=True):
                self.hist_k[self.row[s], c : c + n] = k[start : start + n]
                self.hist_v[self.row[s], c : c + n] = v[start : start + n]
                start += n
        self.stats["steps"] += 1
        self.stats["tokens"] += T
        if check:
            with self.phase("check"):
                self.check(out, q, batch, scale)

    def check(self, out, q, batch, scale):
        histories = [self.history(s) for s, _ in batch]
        ref = reference_attention(
            q, [k for k, _ in histories], [v for _, v in histories], [n for _, n in batch], scale
        )
        err = rel_err(out, ref)
        # every live sequence's cached K/V vs its history: one gather of all their tokens, by slot
        k_std, v_std = self.cache.dense()  # [num_blocks, block_size, Hkv, D]
        bs, capacity = self.args.block_size, self.hist_k.shape[1]
        slots, hist_index = [], []
        for s in self.row:
            n = self.alloc.seq_len(s)
            blocks = torch.tensor(self.alloc.blocks(s))
            slots.append((blocks[:, None] * bs + torch.arange(bs)).flatten()[:n])  # position p -> its slot
            hist_index.append(self.row[s] * capacity + torch.arange(n))
        slots = torch.cat(slots).to(k_std.device)
        hist_index = torch.cat(hist_index).to(k_std.device)
        k_hist, v_hist = self.hist_k.flatten(0, 1)[hist_index], self.hist_v.flatten(0, 1)[hist_index]
        k_got, v_got = k_std.flatten(0, 1)[slots], v_std.flatten(0, 1)[slots]
        same = torch.equal(k_got, k_hist) and torch.equal(v_got, v_hist)  # fast; count only on a mismatch
        cache_err = 0.0 if same else float((k_got != k_hist).sum() + (v_got != v_hist).sum())
        self.stats["checks"] += 1
        self.stats["max_rel_err"] = max(self.stats["max_rel_err"], err)
        self.stats["max_cache_err"] = max(self.stats["max_cache_err"], cache_err)
        if err > TOLERANCE[self.dtype] or cache_err:
            self.stats["mismatches"] += 1
            print(
                f"step {self.stats['steps']}: MISMATCH rel err {err:.3g}, "
                f"{int(cache_err)} cached values differ",
                flush=True,
            )

    def finish(self):
        for s in list(self.row):
            self.free(s)
        free = self.alloc._free
        self.stats["leaked_blocks"] = self.alloc.num_blocks - len(set(free))
        self.stats["duplicate_free_blocks"] = len(free) - len(set(free))
        if self.args.profile:
            steps = max(self.stats["steps"], 1)
            self.stats["phase_ms"] = {k: round(1000 * t / steps, 3) for k, t in self.phase_seconds.items()}
        return self.stats


def run(argv=None) -> dict:
    """Parse ``argv`` (a list of CLI arguments), soak, return the summary (``ok`` says it passed)."""
    args = parse_args(argv)
    soak = Soak(args)
    t0 = time.perf_counter()
    error = None
    for i in range(1, args.steps + 1):
        if i % 1000 == 0:
            print(
                f"step {i}: {time.perf_counter() - t0:.1f} s, {soak.stats['mismatches']} mismatches",
                flush=True,
            )
        try:
            soak.step(check=i % args.check_every == 0 or i == args.steps)
        except Exception as exc:  # a library error mid-soak is a finding: record it and stop
            error = f"step {i}: {type(exc).__name__}: {exc}"
            print(error, flush=True)
            break
    stats = soak.finish()
    stats["error"] = error
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["config"] = {k: v for k, v in vars(args).items() if k != "json"}
    stats["ok"] = (
        error is None
        and stats["mismatches"] == 0
        and stats["leaked_blocks"] == 0
        and stats["duplicate_free_blocks"] == 0
    )
    return stats


def main(argv=None) -> int:
    stats = run(argv)
    cfg = stats["config"]
    print(
        f"soak: {stats['steps']} steps ({cfg['backend']}, {cfg['layout']}, {cfg['dtype']}, {cfg['device']}), "
        f"{stats['tokens']} tokens, {stats['started']} sequences started / {stats['freed']} freed, "
        f"{stats['full_events']} cache-full events, {stats['seconds']} s"
    )
    print(
        f"checks: {stats['checks']}, mismatches: {stats['mismatches']}, "
        f"max rel err {stats['max_rel_err']:.3g}, leaked blocks: {stats['leaked_blocks']}"
    )
    json_path = parse_args(argv).json
    if json_path:
        with open(json_path, "w") as f:
            json.dump(stats, f, indent=2, default=str)
    if "phase_ms" in stats:
        print("ms per step: " + ", ".join(f"{k} {v:.3f}" for k, v in stats["phase_ms"].items()))
    print("OK" if stats["ok"] else "FAILED")
    return 0 if stats["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
