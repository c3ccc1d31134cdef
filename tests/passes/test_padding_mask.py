"""patterns/padding_mask.py through the attention rewrite, on masks built by transformers' own masking
functions (sdpa_mask / eager_mask) inside the captured function: the proven ones become flash_attention's
key_valid vector, the rest keep the 4-D mask. Outputs vs the uncompiled function on rows that see a key."""

import pytest
import torch
import torch.nn.functional as F
from transformers import masking_utils as mu

from rocm_attn.testing import capture_passes, rel_err
from rocm_attn.testing import count_calls as count

FLASH = torch.ops.rocm_attn.flash_attention.default
B, HQ, HKV, S, D = 3, 4, 2, 9, 16


def capture(fn, *args):
    return capture_passes(fn, *args, quantization="none")


def repeat_kv(x, n):
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def key_mask(kind):
    """[B, S] 0/1 long attention_mask; row 0 unpadded."""
    m = torch.ones(B, S, dtype=torch.long)
    if kind == "left":
        m[1, :3], m[2, :6] = 0, 0
    elif kind == "right":
        m[1, 5:], m[2, 2:] = 0, 0
    else:  # holes: not contiguous
        m[1, torch.tensor([0, 3, 4, 7])] = 0
        m[2, torch.rand(S) > 0.5] = 0
        m[2, 0] = 1
    return m


def site(make_mask, eager=False):
    """HF-style attention (SDPA call or eager chain) with mask = make_mask(attention_mask), as a function
    of (q, k, v, attention_mask); make_mask is kept on it for the reference."""

    def f(q, k, v, am):
        mask = make_mask(am)
        k, v = repeat_kv(k, HQ // HKV), repeat_kv(v, HQ // HKV)
        if not eager:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        p = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * 0.3 + mask, dim=-1, dtype=torch.float32)
        return torch.matmul(p.to(q.dtype), v)

    f.make_mask = make_mask
    return f


def hf_site(mask_fn, q_length=S, q_offset=0, eager=False):
    """site() with transformers' own sdpa_mask / eager_mask for mask_fn and the 2-D attention_mask."""

    def make_mask(am):
        build = mu.eager_mask if eager else mu.sdpa_mask
        kwargs = {"dtype": torch.float32} if eager else {"allow_is_causal_skip": False}
        return build(batch_size=B, q_length=q_length, kv_length=S, q_offset=q_offset, mask_function=mask_fn,
                     attention_mask=am.to(torch.bool), **kwargs)

    return site(make_mask, eager)


def check(fn, am, q_length=S):
    """Compile fn with the rewrite; compare with fn on the query rows that see a key (the others are
    undefined: 0 here, NaN or a uniform average in HF); return (flash node, report site)."""
    q = torch.randn(B, HQ, q_length, D)
    k, v = torch.randn(B, HKV, S, D), torch.randn(B, HKV, S, D)
    out, gm, gr = capture(fn, q, k, v, am)
    ref = fn(q, k, v, am)
    assert count(gm, FLASH) == 1 and count(gm, F.scaled_dot_product_attention) == 0
    (flash,) = [n for n in gm.graph.nodes if n.target is FLASH]
    mask = fn.make_mask(am)
    visible = mask if mask.dtype == torch.bool else mask == 0
    rows = visible.expand(B, HQ, q_length, S).any(-1)
    assert rows.float().mean() > 0.5  # most rows are compared
    assert rel_err(out[rows], ref[rows]) < 1e-5
    return flash, gr.sites[0]


CAUSAL = mu.causal_mask_function
PROVEN = {
    "causal": (hf_site(CAUSAL), True, 0),
    "sliding": (hf_site(mu.sliding_window_causal_mask_function(3)), True, 3),
    "bidirectional": (hf_site(mu.bidirectional_mask_function), False, 0),
    "eager_causal": (hf_site(CAUSAL, eager=True), True, 0),
    "eager_sliding": (hf_site(mu.sliding_window_causal_mask_function(4), eager=True), True, 4),
}


@pytest.mark.parametrize("padding", ["left", "right", "holes"])
@pytest.mark.parametrize("case", list(PROVEN))
def test_proven_masks_become_key_valid(case, padding):
    fn, causal, window = PROVEN[case]
    flash, site = check(fn, key_mask(padding))
    q, k, v, attn_mask, scale, flag_causal, flag_window, softcap, key_valid = flash.args
    assert attn_mask is None and key_valid is not None
    assert (flag_causal, flag_window) == (causal, window)
    assert site.rewritten and site.detail["mask"].startswith("key padding from attention_mask")
    assert "mask: key padding" in site.reason


def test_decode_offset_is_proven():
    """Sq = 1 at position S - 1 (a decode step): HF's offsets agree with bottom-right causal."""
    flash, site = check(hf_site(CAUSAL, q_length=1, q_offset=S - 1), key_mask("left"), q_length=1)
    assert flash.args[8] is not None and flash.args[5] is True


def _user_4d(am):
    return am.bool()[:, None, None, :] & torch.ones(S, S, dtype=torch.bool).tril()


def _extra_and(am):
    mask = mu.sdpa_mask(batch_size=B, q_length=S, kv_length=S, attention_mask=am.to(torch.bool),
                        allow_is_causal_skip=False)
    return mask & (torch.arange(S) != 2)  # one more key masked after HF built it


def _causal_only(am):
    return mu.sdpa_mask(batch_size=B, q_length=S, kv_length=S, allow_is_causal_skip=False)


NOT_PROVEN = {
    # HF's causal mask for queries at positions 2..S+1 against keys 0..S-1: not bottom-right aligned
    "offset": (hf_site(CAUSAL, q_offset=2), "offset"),
    "user_4d": (site(_user_4d), "no final expand"),
    "extra_and": (site(_extra_and), "no final expand"),
    "or_mask": (hf_site(mu.or_masks(CAUSAL, lambda b, h, q, kv: kv == 0)), "or_masks"),
    "chunked": (hf_site(mu.chunked_causal_mask_function(4, torch.zeros(B, dtype=torch.long))), "unknown"),
    "extra_term": (hf_site(mu.and_masks(CAUSAL, lambda b, h, q, kv: kv != 1)), "unknown form"),
}


@pytest.mark.parametrize("case", list(NOT_PROVEN))
def test_other_masks_keep_the_4d_tensor(case):
    fn, why = NOT_PROVEN[case]
    flash, site = check(fn, key_mask("left"))
    assert flash.args[3] is not None and flash.args[8] is None
    assert site.detail["mask"].startswith("4-D bool tensor") and why in site.detail["mask"], site.detail


def test_causal_without_padding_needs_no_mask():
    """sdpa_mask with no attention_mask: causal alone, so flash_attention takes no mask and no key_valid."""
    flash, report_site = check(site(_causal_only), key_mask("left"))
    q, k, v, attn_mask, scale, causal, window, softcap, key_valid = flash.args
    assert attn_mask is None and key_valid is None and causal is True and window == 0
    assert report_site.detail["mask"].startswith("no key padding (causal")
