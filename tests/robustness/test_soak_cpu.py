"""The attention soak (benchmarks/soak_attention.py) on CPU with tiny shapes and a few hundred steps:
no mismatch vs the float64 reference, no cached value changed behind a sequence's back, no leaked
block. The GPU run (10,000 steps) is the same script with its defaults."""

import importlib.util
import pathlib

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "soak_attention.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # tiny steps are all overhead: one thread (two threads on a busy 2-core runner made it 20x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "args",
    [
        ["--layout", "standard", "--backend", "TRITON_ATTN", "--dtype", "float32", "--steps", "400"],
        ["--layout", "shuffled", "--backend", "ROCM_AITER_FA", "--dtype", "bfloat16", "--steps", "300"],
    ],
)
def test_soak_cpu(soak, args):
    stats = soak.run(["--device", "cpu", "--tiny", "--check-every", "20", "--seed", "1", *args])
    assert stats["checks"] >= 5 and stats["mismatches"] == 0, stats
    assert stats["full_events"] > 0 and stats["freed"] > 10  # the cache filled up and blocks were reused
    assert stats["leaked_blocks"] == 0 and stats["duplicate_free_blocks"] == 0, stats
    assert stats["error"] is None and stats["ok"]


def test_soak_catches_a_leak_and_a_shared_block(soak, monkeypatch):
    """The soak's own checks can fail: an allocator that forgets a block, or hands one out twice."""
    from rocm_attn.kernels.kv_cache import BlockAllocator

    real_free = BlockAllocator.free

    def leaky_free(self, seq_id):
        self._blocks[seq_id] = self._blocks[seq_id][:-1]  # drop one block on the floor
        real_free(self, seq_id)

    monkeypatch.setattr(BlockAllocator, "free", leaky_free)
    stats = soak.run(
        ["--device", "cpu", "--tiny", "--steps", "30", "--check-every", "10", "--dtype", "float32"]
    )
    assert stats["leaked_blocks"] > 0 and not stats["ok"]
    monkeypatch.setattr(BlockAllocator, "free", real_free)

    def double_free(self, seq_id):
        blocks = list(self._blocks[seq_id])
        real_free(self, seq_id)
        self._free.extend(blocks[:1])  # a block that is now free twice: two sequences will share it

    monkeypatch.setattr(BlockAllocator, "free", double_free)
    stats = soak.run(
        ["--device", "cpu", "--tiny", "--steps", "60", "--check-every", "3", "--dtype", "float32"]
    )
    # caught by the cache check, the free-list check, or attention()'s duplicate-slot error
    assert (
        stats["mismatches"] > 0
        or stats["duplicate_free_blocks"] > 0
        or "slot twice" in (stats["error"] or "")
    )
    assert not stats["ok"]


@pytest.mark.parametrize("layout, backend", [("standard", "TRITON_ATTN"), ("shuffled", "ROCM_AITER_FA")])
def test_soak_check_catches_a_changed_cached_value(soak, layout, backend):
    """A value written behind a live sequence's back (here: its first token's K) fails the cache check."""
    args = ["--device", "cpu", "--tiny", "--dtype", "float32", "--layout", layout, "--backend", backend]
    run = soak.Soak(soak.parse_args(args))
    for _ in range(15):
        run.step(check=False)
    empty = torch.empty(0, run.args.kv_heads * run.args.group, run.args.head_dim)
    run.check(empty, empty, [], 1.0)  # cache only (no batch to check)
    assert run.stats["mismatches"] == 0
    seq = next(iter(run.row))
    k_hist, v_hist = run.history(seq)
    slot = torch.tensor([run.alloc.blocks(seq)[0] * run.args.block_size])
    torch.ops.rocm_attn.reshape_and_cache(
        k_hist[:1] + 1, v_hist[:1], run.cache.k_cache, run.cache.v_cache, slot, layout
    )
    run.check(empty, empty, [], 1.0)
    assert (
        run.stats["mismatches"] == 1 and run.stats["max_cache_err"] == run.args.head_dim * run.args.kv_heads
    )


def test_soak_check_catches_a_wrong_output(soak, monkeypatch):
    real = soak.rocm_attn.attention
    monkeypatch.setattr(soak.rocm_attn, "attention", lambda *a, **k: real(*a, **k) * 1.001)
    stats = soak.run(
        ["--device", "cpu", "--tiny", "--steps", "10", "--check-every", "5", "--dtype", "float32"]
    )
    assert stats["mismatches"] == 2 and stats["max_rel_err"] > 5e-4 and not stats["ok"]
