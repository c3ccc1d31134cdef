"""Host work of one attention() step of the split backends (ROCM_AITER_FA / ROCM_ATTN), counted on CPU.

On a GPU each host sync costs tens of us and each launch ~5 us, and a host->device copy inside the call
keeps it out of a CUDA graph. So per call we count, outside rocm_attn's ops (their torch reference
providers read lengths on the host by design; the GPU providers do not):
  h2d      tensors made from host data (aten.lift_fresh: torch.tensor / as_tensor): one H2D copy each on GPU
  syncs    .item() / int() (aten._local_scalar_dense), .tolist(), ops whose output shape depends on values
  launches every other op that is not a view or an allocation (each rocm_attn op counted once)
The metadata builds its split plan on the first call (one H2D copy) and every later layer of the step
reuses it: no copy, no sync, and only the launches listed below.
"""

import collections
import dataclasses
import random

import pytest
import torch
from rocm_attn.kernels.attention import attention
from rocm_attn.kernels.attention_metadata import build_split_plan
from rocm_attn.kernels.split_attention import _cu, extend_workspace
from torch.utils._python_dispatch import TorchDispatchMode

from rocm_attn.testing import make_mixed_batch, reference_attention, rel_err

BACKENDS = [("ROCM_AITER_FA", "shuffled"), ("ROCM_ATTN", "standard")]
NO_LAUNCH = {"empty", "new_empty", "empty_like", "empty_strided", "detach", "lift_fresh",
             "_local_scalar_dense"}
DATA_DEPENDENT = {"nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                  "repeat_interleave"}


class StepCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.h2d = 0
        self.syncs = collections.Counter()
        self.launches = collections.Counter()
        self._in_op = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__ if func.namespace == "aten" else func.name()
        if func.namespace != "aten":  # one of our ops: one launch (or a few); its inside is not counted
            self.launches[name] += 1
            self._in_op += 1
            try:
                return func(*args, **kwargs)
            finally:
                self._in_op -= 1
        if name == "lift_fresh":
            self.h2d += 1
        elif name == "_local_scalar_dense" or name in DATA_DEPENDENT:
            self.syncs[name] += 1
        elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.syncs[name + "(bool mask)"] += 1
        if not func.is_view and name not in NO_LAUNCH:
            self.launches[name] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(t, *a, **k):
            if not counter._in_op:
                counter.syncs["tolist"] += 1
            return counter._tolist(t, *a, **k)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def step(mb, backend, window=None, metadata=None):
    """One attention() call with the step's metadata, as an engine's layer makes it -> (out, counts)."""
    md = metadata or mb.metadata
    with StepCounter() as counts:
        out = attention(mb.q, mb.k, mb.v, mb.kv_cache, md.query_start_loc, md.seq_lens, md.block_table,
                        md.slot_mapping, scale=mb.scale, backend=backend, sliding_window=window, metadata=md)
    return out, counts


def check(mb, out, window=None):
    ref = reference_attention(mb.q, mb.k_full, mb.v_full, mb.query_lens, mb.scale, window)
    assert rel_err(out, ref) < 1e-5


DECODE_HEAVY = [(40 + 3 * i, 1) for i in range(64)] + [(0, 512)]  # 64 decodes + one 512-token prefill


def test_the_counter_sees_copies_syncs_and_launches():
    with StepCounter() as c:
        cu = _cu([3, 4], "cpu")  # a torch.tensor from host data: an H2D copy on a GPU
        cu.tolist()
        int(cu[1])
        torch.arange(6).index_select(0, cu[:2])
        (cu > 2).nonzero()
    assert c.h2d == 1
    assert c.syncs == {"tolist": 1, "_local_scalar_dense": 1, "nonzero": 1}
    assert c.launches["index_select"] == 1 and c.launches["arange"] == 1


@pytest.mark.parametrize("backend,layout", BACKENDS)
def test_decode_heavy_mix(backend, layout):
    mb = make_mixed_batch(DECODE_HEAVY, 1, 2, 16, 16, torch.float32, layout, seed=1)
    out, first = step(mb, backend)
    check(mb, out)
    assert first.h2d == 1 and not first.syncs  # the plan: one copy of the prefill's cu_seqlens
    out2, later = step(mb, backend)  # the next layer of the step
    assert torch.equal(out, out2)
    assert later.h2d == 0 and not later.syncs
    # the decodes lead, so no reorder: the cache write, the two kernels, one cat of their outputs
    assert later.launches == {"rocm_attn::reshape_and_cache": 1, "rocm_attn::paged_decode": 1,
                              "rocm_attn::flash_attn_varlen": 1, "cat": 1}


@pytest.mark.parametrize("backend,layout", BACKENDS)
@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_one_kind_takes_one_path(backend, layout, kind):
    specs = [(9 + 5 * i, 1) for i in range(6)] if kind == "decode" else [(0, 7), (0, 12), (0, 3)]
    mb = make_mixed_batch(specs, 1, 2, 16, 16, torch.float32, layout, seed=2)
    out, first = step(mb, backend)
    check(mb, out)
    assert first.h2d == (0 if kind == "decode" else 1) and not first.syncs
    _, later = step(mb, backend)
    op = "rocm_attn::paged_decode" if kind == "decode" else "rocm_attn::flash_attn_varlen"
    assert later.h2d == 0 and not later.syncs
    assert later.launches == {"rocm_attn::reshape_and_cache": 1, op: 1}  # the op's output is the output


@pytest.mark.parametrize("backend,layout", BACKENDS)
def test_interleaved_kinds_gather_once_and_scatter_once(backend, layout):
    # decodes, extends (two context rounds under a workspace of 24) and prefills in random order
    kinds = ["decode", "extend", "prefill", "decode", "extend", "decode", "prefill", "decode"]
    random.Random(3).shuffle(kinds)
    lens = {"decode": (17, 1), "extend": (19, 4), "prefill": (0, 6)}
    mb = make_mixed_batch([lens[k] for k in kinds], 1, 2, 16, 16, torch.float32, layout, seed=3)
    with extend_workspace(24):
        out, first = step(mb, backend)
        check(mb, out)
        assert first.h2d == 1 and not first.syncs  # every index tensor of the step in one copy
        ws = dict(mb.metadata.split_plan("cpu", 24).workspaces)
        out2, later = step(mb, backend)
    assert torch.equal(out, out2)
    assert later.h2d == 0 and not later.syncs
    assert later.launches == {
        "rocm_attn::reshape_and_cache": 1,
        "index_select": 3 + 2 + 1 + 1,  # q, k, v into kind order; decode seq_lens + block_table; extend
        #                                 block_table; the output back to input order
        "rocm_attn::paged_decode": 1,
        "rocm_attn::flash_attn_varlen": 1 + 2 + 1,  # extends' new tokens, 2 context rounds, prefills
        "rocm_attn::gather_cache": 2,
        "rocm_attn::merge_attn_states": 2,
        "cat": 1,
    }
    # the extends' workspace: allocated on the first layer (bounded by the workspace tokens), then reused
    (k_ws, v_ws), = ws.values()
    assert k_ws.shape[0] <= 24
    (k2, v2), = mb.metadata.split_plan("cpu", 24).workspaces.values()
    assert k2 is k_ws and v2 is v_ws


@pytest.mark.parametrize("backend,layout", BACKENDS)
def test_a_window_layer_adds_one_copy_per_step(backend, layout):
    specs = [(30, 1), (25, 5), (0, 4), (40, 1)]
    mb = make_mixed_batch(specs, 1, 2, 16, 16, torch.float32, layout, seed=4)
    out, first = step(mb, backend)
    check(mb, out)
    out, windowed = step(mb, backend, window=6)  # a sliding-window layer: its own context rounds
    check(mb, out, window=6)
    assert windowed.h2d == 1 and not windowed.syncs
    _, again = step(mb, backend, window=6)
    assert again.h2d == 0 and not again.syncs


def test_triton_attn_for_comparison():
    mb = make_mixed_batch(DECODE_HEAVY, 1, 2, 16, 16, torch.float32, "standard", seed=1)
    out, counts = step(mb, "TRITON_ATTN")
    check(mb, out)
    assert counts.h2d == 0 and not counts.syncs
    assert counts.launches == {"rocm_attn::reshape_and_cache": 1, "rocm_attn::unified_attention": 1}


def test_plan_cache_is_per_metadata():
    mb = make_mixed_batch([(5, 1), (0, 3)], 1, 2, 16, 16, torch.float32, "standard", seed=5)
    plan = mb.metadata.split_plan("cpu", 8)
    assert mb.metadata.split_plan("cpu", 8) is plan
    fresh = dataclasses.replace(mb.metadata, query_lens=[1, 3])
    assert fresh.split_plan("cpu", 8) is not plan


def test_plan_indices():
    # kinds interleaved: token_order lists input rows in kind order, input_order is its inverse
    query_lens, context_lens = [3, 1, 2, 0, 1, 4], [0, 7, 5, 9, 0, 2]
    plan = build_split_plan(query_lens, context_lens, torch.device("cpu"), 4)
    assert [plan.decode.seqs, plan.extend.seqs, plan.prefill.seqs] == [[1, 4], [2, 5], [0]]
    assert plan.token_order.tolist() == [3, 6, 4, 5, 7, 8, 9, 10, 0, 1, 2]
    assert plan.token_order[plan.input_order].tolist() == list(range(11))
    assert plan.decode.seq_index.tolist() == [1, 4] and plan.extend.seq_index.tolist() == [2, 5]
    assert plan.prefill.seq_index == slice(0, 1)
    assert plan.extend.cu_seqlens.tolist() == [0, 2, 6]
    rounds, rows = plan.extend_rounds[(4, 0)]
    assert rows == 4 and [(r.seq_starts.tolist(), r.cu_seqlens_k.tolist()) for r in rounds] == [
        ([0, 0], [0, 4, 4]), ([4, 0], [0, 1, 3])]
    # already in kind order: no reorder, slices only, no tensor at all for a decode-only batch
    plan = build_split_plan([1, 1, 1], [4, 5, 6], torch.device("cpu"), 4)
    assert plan.token_order is None
    assert plan.decode.seq_index == slice(0, 3) and plan.decode.tokens == slice(0, 3)
    with pytest.raises(ValueError, match="workspace"):
        build_split_plan([2], [3], torch.device("cpu"), 0)
