"""rocm_attn.patch.SharedInputProjections: eager calls of a patched model's q/k/v and gate/up run as one
ptpc_linear per group (one activation quant, one GEMM over the group's adjacent weight rows), and a member
only takes a kept slice when it is called with the very tensor the group computed from, unchanged since."""

import pytest
import torch
import transformers as T
from torch.utils._python_dispatch import TorchDispatchMode

import rocm_attn
from rocm_attn.patch import FP8Linear, _share_projection_storage

LAYERS = 2


class CountPtpcLinear(TorchDispatchMode):
    """Counts calls of torch.ops.rocm_attn.ptpc_linear that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.rocm_attn.ptpc_linear.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def patched_llama(**options):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                        num_attention_heads=4, num_key_value_heads=2)
    model = T.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rocm_attn.patch(model, quantization="ptpc_fp8", compile=False, **options)
    return model


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_eager_forward_runs_one_linear_per_group(grad_mode):
    fused, apart = patched_llama(), patched_llama(fuse_projections=False)
    ids = torch.randint(1, 128, (2, 9))
    logits = {}
    for name, model in (("fused", fused), ("apart", apart)):
        with grad_mode(), CountPtpcLinear() as count:
            logits[name] = model(input_ids=ids, use_cache=False).logits
        # fused: q/k/v, o_proj, gate/up, down_proj per layer; apart: the 7 linears
        assert count.calls == (4 if name == "fused" else 7) * LAYERS, name
    # the same quant and the same rows: the wide GEMM's columns are the narrow GEMMs'
    assert torch.equal(logits["fused"], logits["apart"])
    for layer in fused.model.layers:  # every slice was taken: nothing held between forwards
        for group in (layer.self_attn.q_proj.shared_input_group, layer.mlp.gate_proj.shared_input_group):
            assert group._pending is None and group.enabled


class QKV(torch.nn.Module):
    def __init__(self, bias=False):
        super().__init__()
        self.q_proj = FP8Linear(torch.nn.Linear(32, 16, bias=bias))
        self.k_proj = FP8Linear(torch.nn.Linear(32, 8, bias=bias))
        self.v_proj = FP8Linear(torch.nn.Linear(32, 8, bias=bias))


def grouped_qkv(bias=False):
    torch.manual_seed(0)
    mod = QKV(bias)
    report = rocm_attn.PatchReport("QKV", "ptpc_fp8", "-", "-")
    _share_projection_storage(mod, report)
    assert report.projection_groups == 1
    return mod


def alone(mod, x):
    return [m.forward_alone(x) for m in (mod.q_proj, mod.k_proj, mod.v_proj)]


@pytest.mark.parametrize("bias", [False, True])
def test_any_call_order_gives_each_member_its_own_rows(bias):
    mod = grouped_qkv(bias)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = alone(mod, x)
        with CountPtpcLinear() as count:
            v, q, k = mod.v_proj(x), mod.q_proj(x), mod.k_proj(x)
    assert count.calls == 1
    for out, want in zip((q, k, v), ref, strict=True):
        assert out.shape == want.shape
        assert torch.equal(out, want)


def test_an_in_place_change_between_siblings_is_not_missed():
    mod = grouped_qkv()
    x = torch.randn(4, 32)
    with torch.no_grad(), CountPtpcLinear() as count:
        q = mod.q_proj(x)
        x.mul_(3.0)  # k and v must see the new values, not slices computed from the old ones
        k, v = mod.k_proj(x), mod.v_proj(x)
        _, k_ref, v_ref = alone(mod, x)
    assert count.calls == 2 + 3  # q's group call, k's fresh group call (v takes its slice); then alone()
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    assert not torch.equal(q, mod.q_proj.forward_alone(x))  # (q did see the old x)


def test_an_equal_but_different_tensor_computes_afresh():
    mod = grouped_qkv()
    x = torch.randn(4, 32)
    with torch.no_grad(), CountPtpcLinear() as count:
        mod.q_proj(x)
        k = mod.k_proj(x.clone())
    assert count.calls == 2
    assert torch.equal(k, mod.k_proj.forward_alone(x))


def test_members_no_longer_adjacent_run_alone():
    """A buffer replaced after patch() (here k_proj's weight, as load_state_dict(assign=True) would) breaks the
    shared layout: every member then runs its own ptpc_linear, with its own (new) weight."""
    mod = grouped_qkv()
    mod.k_proj.wq = mod.k_proj.wq.clone()
    x = torch.randn(3, 32)
    with torch.no_grad(), CountPtpcLinear() as count:
        outs = [mod.q_proj(x), mod.k_proj(x), mod.v_proj(x)]
    assert count.calls == 3
    for out, want in zip(outs, alone(mod, x), strict=True):
        assert torch.equal(out, want)


def test_compiled_patched_model_keeps_the_graph_pass():
    """Under torch.compile the group's eager path is skipped: the graph holds the ptpc_linear calls and the
    split pass fuses them (its op counts are tests/passes/test_patched_linear_split.py's)."""
    mod = grouped_qkv()
    x = torch.randn(3, 32)
    with torch.no_grad():
        ref = alone(mod, x)
        compiled = torch.compile(lambda t: (mod.q_proj(t), mod.k_proj(t), mod.v_proj(t)), backend="rocm_attn")
        outs = compiled(x)
    for out, want in zip(outs, ref, strict=True):
        assert (out.float() - want.float()).abs().max() <= 1e-6 * want.float().abs().max()
    assert mod.q_proj.shared_input_group._pending is None  # the eager path never ran


def test_a_group_whose_slices_go_unused_is_switched_off(caplog):
    """A layer that calls only some members (as one sharing another layer's k/v would) must not keep paying
    for the others' rows: after MAX_UNUSED unused results in a row the group runs its members one by one."""
    mod = grouped_qkv()
    group = mod.q_proj.shared_input_group
    assert group.names == ["q_proj", "k_proj", "v_proj"]
    outs = []
    with torch.no_grad(), caplog.at_level("INFO", logger="rocm_attn"):
        for _ in range(group.MAX_UNUSED + 2):
            x = torch.randn(3, 32)
            outs.append((mod.q_proj(x), mod.q_proj.forward_alone(x)))
    assert not group.enabled and group._pending is None
    assert "q_proj/k_proj/v_proj are not all called on one input" in caplog.text
    for out, want in outs:
        assert torch.equal(out, want)
    x = torch.randn(3, 32)
    with torch.no_grad(), CountPtpcLinear() as count:
        mod.q_proj(x), mod.k_proj(x), mod.v_proj(x)
    assert count.calls == 3  # one by one from now on
