"""Attention patterns on small hand-built functions: op counts before/after and outputs.

Each function is captured by Dynamo with a backend that only runs our torch-level passes, so the
result is computed by the rewritten graph (torch reference providers on CPU), without Inductor."""

import pytest
import torch
import torch.nn.functional as F
from rocm_attn.passes import run_passes
from rocm_attn.passes.report import GraphReport

from rocm_attn import Config
from rocm_attn.testing import capture_passes as capture
from rocm_attn.testing import count_calls as count
from rocm_attn.testing import rel_err

FLASH = torch.ops.rocm_attn.flash_attention.default


def repeat_kv(x, n):
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def qkv(b=2, hq=4, hkv=2, sq=6, sk=6, d=16):
    return torch.randn(b, hq, sq, d), torch.randn(b, hkv, sk, d), torch.randn(b, hkv, sk, d)


def padding_mask(b=2, sq=6, sk=6):
    """HF-style 4-D bool mask: causal + left padding of sequence 0."""
    m = torch.ones(sq, sk, dtype=torch.bool).tril()[None, None].expand(b, 1, sq, sk).clone()
    m[0, :, :, :2] = False
    m[0, :, :2, :] = True  # padded query rows: keep them defined for the comparison
    return m


def test_sdpa_repeat_kv_with_mask():
    q, k, v = qkv()
    mask = padding_mask()

    def f(q, k, v, mask):
        return F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=mask, scale=0.3)

    out, gm, gr = capture(f, q, k, v, mask)
    assert count(gm, FLASH) == 1 and count(gm, F.scaled_dot_product_attention) == 0
    # repeat_kv was undone: flash_attention reads the 2 KV heads
    flash = next(n for n in gm.graph.nodes if n.target is FLASH)
    assert flash.args[1].meta["example_value"].shape[1] == 2
    assert gr.sites[0].rewritten and gr.sites[0].detail["gqa"] == "repeat_kv undone"
    assert rel_err(out, f(q, k, v, mask)) < 1e-5


@pytest.mark.parametrize("gqa", [True, False])
def test_sdpa_causal_and_enable_gqa(gqa):
    q, k, v = qkv(hkv=2 if gqa else 4)

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    out, gm, gr = capture(f, q, k, v)
    flash = next(n for n in gm.graph.nodes if n.target is FLASH)
    assert flash.args[5] is True and flash.args[3] is None
    assert abs(flash.args[4] - 16**-0.5) < 1e-12  # scale=None -> 1/sqrt(D)
    assert rel_err(out, f(q, k, v)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(dropout_p=0.1), "dropout_p"),
        (dict(is_causal=True, sq=3), "Sq != Sk"),
    ],
)
def test_sdpa_not_rewritten_says_why(kwargs, reason):
    sq = kwargs.pop("sq", 6)
    q, k, v = qkv(hkv=4, sq=sq)

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    _, gm, gr = capture(f, q, k, v)
    assert count(gm, FLASH) == 0 and count(gm, F.scaled_dot_product_attention) == 1
    assert not gr.sites[0].rewritten and reason in gr.sites[0].reason


def test_sdpa_head_dim_too_large_stays():
    q, k, v = torch.randn(1, 2, 4, 320), torch.randn(1, 2, 4, 320), torch.randn(1, 2, 4, 320)
    _, gm, gr = capture(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)
    assert count(gm, FLASH) == 0 and "head dim" in gr.sites[0].reason


def test_rewrite_attention_off():
    q, k, v = qkv(hkv=4)
    _, gm, gr = capture(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v, rewrite_attention=False
    )
    assert count(gm, FLASH) == 0 and gr.sites[0].reason == "rewrite_attention=False"


def eager_attention(q, k, v, mask, scaling, softcap=None):
    """HF's eager_attention_forward (Llama / Gemma 2 form)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    w = torch.matmul(q, k.transpose(2, 3)) * scaling
    if softcap is not None:
        w = w / softcap
        w = torch.tanh(w)
        w = w * softcap
    if mask is not None:
        w = w + mask
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    w = F.dropout(w, p=0.0, training=False)
    return torch.matmul(w, v).transpose(1, 2).contiguous()


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_eager_chain_with_softcap_and_additive_mask(softcap):
    q, k, v = qkv()
    mask = torch.zeros(2, 1, 6, 6).masked_fill(~padding_mask(), torch.finfo(torch.float32).min)

    def f(q, k, v, mask):
        return eager_attention(q, k, v, mask, 0.25, softcap)

    out, gm, gr = capture(f, q, k, v, mask)
    assert count(gm, FLASH) == 1 and count(gm, torch.matmul) == 0
    flash = next(n for n in gm.graph.nodes if n.target is FLASH)
    assert flash.args[4] == 0.25 and flash.args[7] == (softcap or 0.0)
    assert rel_err(out, f(q, k, v, mask)) < 1e-5


def test_eager_chain_returning_weights_stays():
    q, k, v = qkv(hkv=4)

    def f(q, k, v):
        w = F.softmax(torch.matmul(q, k.transpose(2, 3)) * 0.25, dim=-1)
        return torch.matmul(w, v), w  # output_attentions: the weights are needed

    _, gm, gr = capture(f, q, k, v)
    assert count(gm, FLASH) == 0 and "used elsewhere" in gr.sites[0].reason


def test_eager_unknown_variant_stays():
    q, k, v = qkv(hkv=4)

    def f(q, k, v):  # an extra bias between the scores and the softmax: not HF's chain
        w = F.softmax(torch.matmul(q, k.transpose(2, 3)).relu() * 0.25, dim=-1)
        return torch.matmul(w, v)

    out, gm, gr = capture(f, q, k, v)
    assert count(gm, FLASH) == 0 and not gr.sites[0].rewritten and gr.sites[0].reason
    assert rel_err(out, f(q, k, v)) < 1e-6


def test_training_graph_is_not_rewritten():
    q, k, v = (t.requires_grad_() for t in qkv(hkv=4))
    seen = {}

    def backend(gm, example_inputs):
        gr = GraphReport(0)
        run_passes(gm, example_inputs, Config(), gr)
        seen["report"] = gr
        return gm.forward

    torch._dynamo.reset()
    torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend=backend)(q, k, v)
    assert "autograd" in seen["report"].sites[0].reason


@pytest.mark.parametrize("backend, noted", [("TRITON_ATTN", False), ("ROCM_AITER_FA", True)])
def test_attention_backend_in_a_dense_graph_is_reported(backend, noted):
    """A compiled graph without a paged cache has no use for the paged backends: the report says so."""
    q, k, v = qkv()

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), is_causal=True)

    _, gm, report = capture(f, q, k, v, attention_backend=backend)
    assert count(gm, FLASH) == 1
    assert any("attention_backend=ROCM_AITER_FA" in note for note in report.notes) == noted
