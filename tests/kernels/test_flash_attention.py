"""flash_attention (dense) and flash_attn_varlen: every provider vs SDPA in fp32 and an independent loop
reference (float64, written here)."""

import math

import pytest
import torch
import torch.nn.functional as F
from rocm_attn.kernels import use_kernels

from rocm_attn.testing import rel_err

PROVIDERS = ["torch", "triton"]


def loop_reference(q, k, v, scale, causal, window=0, softcap=0.0, mask=None, q_pos0=None):
    """One query at a time, float64. q [Hq,Lq,D], k/v [Hkv,Lk,D*]; query i at q_pos0 + i (default Lk - Lq + i).
    Returns (out [Hq,Lq,Dv], lse [Hq,Lq]); rows with nothing visible -> 0 and -inf."""
    hq, lq, _ = q.shape
    hkv, lk, dv = v.shape
    out = torch.zeros(hq, lq, dv, dtype=torch.float64)
    lse = torch.full((hq, lq), -math.inf, dtype=torch.float64)
    pos0 = lk - lq if q_pos0 is None else q_pos0
    for h in range(hq):
        kh = h // (hq // hkv)
        for i in range(lq):
            s = (k[kh].double() @ q[h, i].double()) * scale
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            j = torch.arange(lk)
            ok = torch.ones(lk, dtype=torch.bool)
            if causal:
                ok &= j <= pos0 + i
            if window:
                ok &= (pos0 + i - j) < window
            if mask is not None:
                mrow = mask[h if mask.shape[0] > 1 else 0, i]
                if mrow.dtype == torch.bool:
                    ok &= mrow
                else:
                    s = s + mrow.double()
            s = s.masked_fill(~ok, -math.inf)
            if ok.any():
                lse[h, i] = torch.logsumexp(s, 0)
                out[h, i] = torch.softmax(s, 0) @ v[kh].double()
    return out, lse


def run(provider, fn, *args):
    with use_kernels(provider):
        return fn(*args)


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_sdpa_fp32(provider, group, causal):
    B, hkv, S, D = 2, 2, 19, 32
    q = torch.randn(B, hkv * group, S, D)
    k, v = torch.randn(B, hkv, S, D), torch.randn(B, hkv, S, D)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, None, 0.2, causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.2, enable_gqa=True)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-5
    # [B,Hq,Sq,D] view of a contiguous [B,Sq,Hq,D] buffer
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mask_kind", ["bool_padding", "bool_arbitrary", "float_padding", "float_arbitrary", "2d"])
def test_dense_masks_match_sdpa(provider, mask_kind):
    B, hq, hkv, sq, sk, D = 2, 4, 2, 6, 21, 16
    q = torch.randn(B, hq, sq, D)
    k, v = torch.randn(B, hkv, sk, D), torch.randn(B, hkv, sk, D)
    if mask_kind == "bool_padding":  # left padding, [B,1,1,Sk]
        mask = torch.ones(B, 1, 1, sk, dtype=torch.bool)
        mask[1, ..., :5] = False
    elif mask_kind == "bool_arbitrary":  # per head, [B,Hq,Sq,Sk]
        mask = torch.rand(B, hq, sq, sk) > 0.4
        mask[..., 3] = True
    elif mask_kind == "float_padding":  # HF style: 0 / finfo.min, [B,1,Sq,Sk]
        mask = torch.zeros(B, 1, sq, sk)
        mask[0, ..., -4:] = torch.finfo(torch.float32).min
    elif mask_kind == "float_arbitrary":
        mask = torch.randn(B, 1, sq, sk)
    else:  # [Sq,Sk] bool, causal-like with an offset
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, mask, 0.3, False)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dense_fully_masked_row_is_zero(provider):
    q, k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    mask = torch.ones(1, 1, 4, 8, dtype=torch.bool)
    mask[0, 0, 2] = False  # SDPA would give NaN for this row
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, mask, 0.25, False)
    assert torch.isfinite(out).all() and (out[0, :, 2] == 0).all()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25)
    keep = torch.ones(4, dtype=torch.bool)
    keep[2] = False
    assert rel_err(out[:, :, keep], ref[:, :, keep]) < 1e-5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dense_nan_inputs_stay_nan(provider):
    """A NaN in a key reaches the queries that see it, a NaN in a query its own row, as in the plain math
    (SDPA's CPU kernel loses a query's NaN): the fully-masked-row rule (0) must not hide bad inputs."""
    q, k, v = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 6, 16), torch.randn(1, 1, 6, 16)
    k_nan = k.clone()
    k_nan[0, 0, 5, 0] = float("nan")  # causal, bottom-right: only the last query sees key 5
    q_nan = q.clone()
    q_nan[0, 0, 1, 3] = float("nan")
    for qq, kk, nan_row in ((q, k_nan, 3), (q_nan, k, 1)):
        out = run(provider, torch.ops.rocm_attn.flash_attention, qq, kk, v, None, 0.25, True)
        ref, _ = loop_reference(qq[0], kk[0], v[0], 0.25, True)
        assert out[0, 0, nan_row].isnan().all() and ref[0, nan_row].isnan().all()
        rows = [i for i in range(4) if i != nan_row]
        assert rel_err(out[0, 0, rows], ref[0, rows]) < 1e-5


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 23), (1, 30)])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (6, 0.0), (0, 4.0), (9, 2.5)])
def test_dense_window_softcap_vs_loop(provider, sq, sk, window, softcap):
    q = torch.randn(1, 4, sq, 32, dtype=torch.float16)
    k, v = torch.randn(1, 1, sk, 32, dtype=torch.float16), torch.randn(1, 1, sk, 32, dtype=torch.float16)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, None, 0.35, True, window, softcap)
    ref, _ = loop_reference(q[0], k[0], v[0], 0.35, True, window, softcap)
    assert out.dtype == torch.float16 and rel_err(out[0], ref) < 2e-3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dense_strided_inputs_and_dv(provider):
    # HF passes transposed views: [B,S,H,D] storage seen as [B,H,S,D]; Dv != D (MLA-like)
    q = torch.randn(2, 9, 4, 32).transpose(1, 2)
    k = torch.randn(2, 9, 2, 32).transpose(1, 2)
    v = torch.randn(2, 9, 2, 16).transpose(1, 2)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, None, 0.2, True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    assert out.shape == (2, 4, 9, 16) and rel_err(out, ref) < 1e-5


def key_valid_case(pattern, B, sk):
    """[B, Sk] bool key validity: row 0 always all valid, then left / right padding or holes."""
    valid = torch.ones(B, sk, dtype=torch.bool)
    for b in range(1, B):
        n = int(torch.randint(1, sk - 1, ()))
        if pattern == "left":
            valid[b, :n] = False
        elif pattern == "right":
            valid[b, n:] = False
        else:  # holes: any 0/1 pattern, one row fully invalid
            valid[b] = torch.rand(sk) > 0.4
    if pattern == "holes":
        valid[-1] = False
    return valid


def dense_key_valid_reference(q, k, v, scale, causal, window, softcap, valid):
    """loop_reference per batch row with key validity as a bool [1, Sq, Sk] mask."""
    outs = []
    for b in range(q.shape[0]):
        mask = valid[b].view(1, 1, -1).expand(1, q.shape[2], -1)
        outs.append(loop_reference(q[b], k[b], v[b], scale, causal, window, softcap, mask=mask)[0])
    return torch.stack(outs)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pattern", ["left", "right", "holes"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("group", [1, 4])
def test_dense_key_valid_vs_loop(provider, pattern, causal, group):
    B, hkv, S, D = 3, 2, 19, 16
    q = torch.randn(B, hkv * group, S, D)
    k, v = torch.randn(B, hkv, S, D), torch.randn(B, hkv, S, D)
    valid = key_valid_case(pattern, B, S)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, None, 0.3, causal, 0, 0.0, valid)
    ref = dense_key_valid_reference(q, k, v, 0.3, causal, 0, 0.0, valid)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-5  # rows with no visible key: 0 in both
    # the same as the [B,1,Sq,Sk] bool mask HF builds for it, on rows that see a key
    mask = valid[:, None, None, :].expand(B, 1, S, S)
    if causal:
        mask = mask & torch.ones(S, S, dtype=torch.bool).tril()
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    seen = mask.any(-1, keepdim=True).expand_as(out)
    assert rel_err(out[seen], sdpa[seen]) < 1e-5


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sq,sk,window,softcap", [(7, 7, 4, 0.0), (5, 23, 6, 2.5), (1, 30, 0, 3.0)])
def test_dense_key_valid_window_softcap_fp16(provider, sq, sk, window, softcap):
    q = torch.randn(2, 4, sq, 32, dtype=torch.float16)
    k, v = torch.randn(2, 1, sk, 32, dtype=torch.float16), torch.randn(2, 1, sk, 32, dtype=torch.float16)
    valid = key_valid_case("left", 2, sk)
    flash = torch.ops.rocm_attn.flash_attention
    out = run(provider, flash, q, k, v, None, 0.35, True, window, softcap, valid)
    ref = dense_key_valid_reference(q, k, v, 0.35, True, window, softcap, valid)
    assert out.dtype == torch.float16 and rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dense_key_valid_and_mask(provider):
    """key_valid is ANDed with a float attn_mask."""
    q, k, v = torch.randn(2, 2, 6, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    valid = key_valid_case("holes", 2, 9)
    bias = torch.randn(2, 1, 6, 9)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, bias, 0.25, False, 0, 0.0, valid)
    masked = bias.masked_fill(~valid[:, None, None], -math.inf)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=masked, scale=0.25)
    assert rel_err(out[0], ref[0]) < 1e-5 and (out[1] == 0).all()  # row 1 has no valid key


# ----------------------------------------------------------------------------- varlen


def varlen_case(lq, lk, hq, hkv, d, dv, dtype):
    cq = torch.tensor([0] + torch.tensor(lq).cumsum(0).tolist(), dtype=torch.int32)
    ck = torch.tensor([0] + torch.tensor(lk).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lq), hq, d).to(dtype)
    k, v = torch.randn(sum(lk), hkv, d).to(dtype), torch.randn(sum(lk), hkv, dv).to(dtype)
    return q, k, v, cq, ck


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (5, 0.0), (0, 3.0)])
@pytest.mark.parametrize("group", [1, 8])
def test_varlen_vs_loop(provider, causal, window, softcap, group):
    lq, lk = [6, 0, 17, 3, 1], [6, 9, 17, 30, 12]  # includes Lq > visible keys and an empty sequence
    q, k, v, cq, ck = varlen_case(lq, lk, group, 1, 32, 32, torch.float32)
    out, lse = run(provider, torch.ops.rocm_attn.flash_attn_varlen, q, k, v, cq, ck, max(lq), max(lk), 0.3, causal,
                   window, softcap)
    assert out.shape == q.shape and lse.shape == (group, sum(lq)) and lse.dtype == torch.float32
    for b in range(len(lq)):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        if q1 == q0:
            continue
        ro, rl = loop_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                                0.3, causal, window, softcap)
        assert rel_err(out[q0:q1].transpose(0, 1), ro) < 1e-5
        finite = torch.isfinite(rl)
        assert torch.equal(torch.isfinite(lse[:, q0:q1]), finite)
        torch.testing.assert_close(lse[:, q0:q1][finite].double(), rl[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_varlen_q_pos_offsets_and_fp16_dv(provider):
    lq, lk = [4, 7], [20, 11]
    q, k, v, cq, ck = varlen_case(lq, lk, 4, 2, 64, 32, torch.float16)
    offs = torch.tensor([25, 3], dtype=torch.int32)  # queries past the chunk, queries inside it
    out, lse = run(provider, torch.ops.rocm_attn.flash_attn_varlen, q, k, v, cq, ck, 7, 20, 0.125, True, 8, 0.0,
                   offs)
    for b in range(2):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        ro, _ = loop_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                               0.125, True, 8, 0.0, q_pos0=int(offs[b]))
        assert rel_err(out[q0:q1].transpose(0, 1), ro) < 2e-3


def test_varlen_matches_sdpa_per_sequence():
    lq = [13, 31]
    q, k, v, cq, _ = varlen_case(lq, lq, 8, 2, 64, 64, torch.float32)
    out, _ = torch.ops.rocm_attn.flash_attn_varlen(q, k, v, cq, cq, 31, 31, 0.125, True)
    for b in range(2):
        s = slice(int(cq[b]), int(cq[b + 1]))
        ref = F.scaled_dot_product_attention(q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1),
                                             is_causal=True, scale=0.125, enable_gqa=True)
        assert rel_err(out[s].transpose(0, 1), ref) < 1e-5


# ----------------------------------------------------------------------------- head dims split in two parts

# D not a power of two: QK over two power-of-two parts, no padding to the next power of two
SPLIT_DIMS = [(192, 128), (80, 80), (112, 112)]  # MLA prefill 128 + 64; 64 + 16; 64 + 64 masked to 48


def test_head_dim_blocks_and_configs():
    from rocm_attn.kernels.triton_kernels.flash_attention import _fixed_config, _head_dim_blocks

    blocks = {d: _head_dim_blocks(d) for d in (8, 16, 64, 128, 256, 192, 80, 112, 24, 250)}
    assert blocks == {8: (16, 0), 16: (16, 0), 64: (64, 0), 128: (128, 0), 256: (256, 0),
                      192: (128, 64), 80: (64, 16), 112: (64, 64), 24: (16, 16), 250: (128, 128)}
    assert _fixed_config(4096, 192, 128, torch.bfloat16) is None  # autotuned, not the small big-D tiles
    assert _fixed_config(4096, 192, 128, torch.float32) == (64, 32, 4, 2)
    assert _fixed_config(4096, 256, 256, torch.bfloat16) == (64, 32, 4, 2)
    assert _fixed_config(1, 192, 128, torch.bfloat16) == (16, 32, 4, 2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("d,dv", SPLIT_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_split_head_dim_vs_loop(provider, d, dv, causal):
    B, hkv, group, sq, sk = 2, 2, 2, 19, 37  # GQA; partial query and key blocks
    q = torch.randn(B, hkv * group, sq, d)
    k, v = torch.randn(B, hkv, sk, d), torch.randn(B, hkv, sk, dv)
    out = run(provider, torch.ops.rocm_attn.flash_attention, q, k, v, None, d ** -0.5, causal)
    ref = torch.stack([loop_reference(q[b], k[b], v[b], d ** -0.5, causal)[0] for b in range(B)])
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("d,dv", SPLIT_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_split_head_dim_vs_loop(provider, d, dv, causal):
    lq, lk = [23, 5, 31], [23, 37, 31]
    q, k, v, cq, ck = varlen_case(lq, lk, 4, 2, d, dv, torch.float32)
    scale = d ** -0.5
    varlen = torch.ops.rocm_attn.flash_attn_varlen
    out, lse = run(provider, varlen, q, k, v, cq, ck, max(lq), max(lk), scale, causal)
    assert out.shape == (sum(lq), 4, dv)
    for b in range(len(lq)):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        ro, rl = loop_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                                scale, causal)
        assert rel_err(out[q0:q1].transpose(0, 1), ro) < 1e-5
        torch.testing.assert_close(lse[:, q0:q1].double(), rl, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_varlen_split_head_dim_fp16_window_softcap(provider):
    # MLA-like dims in 16 bits, through the masked / softcap path as well
    lq, lk = [19, 7], [19, 29]
    q, k, v, cq, ck = varlen_case(lq, lk, 4, 1, 192, 128, torch.float16)
    out, _ = run(provider, torch.ops.rocm_attn.flash_attn_varlen, q, k, v, cq, ck, 19, 29, 0.1, True, 11, 2.5)
    for b in range(2):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        ro, _ = loop_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1),
                               0.1, True, 11, 2.5)
        assert out.dtype == torch.float16 and rel_err(out[q0:q1].transpose(0, 1), ro) < 2e-3


# ----------------------------------------------------------------------------- errors, opcheck


def test_bad_inputs():
    q, k, v = torch.randn(1, 3, 4, 16), torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        torch.ops.rocm_attn.flash_attention(q, k, v, None, 0.1, False)
    q = torch.randn(1, 4, 4, 16)
    with pytest.raises(ValueError, match="does not broadcast"):
        torch.ops.rocm_attn.flash_attention(q, k, v, torch.ones(3, 4, dtype=torch.bool), 0.1, False)
    with pytest.raises(TypeError, match="attn_mask"):
        torch.ops.rocm_attn.flash_attention(q, k, v, torch.ones(4, 4, dtype=torch.int64), 0.1, False)
    with pytest.raises(TypeError, match="share a dtype"):
        torch.ops.rocm_attn.flash_attention(q.half(), k, v, None, 0.1, False)
    with pytest.raises(ValueError, match="sliding_window"):
        torch.ops.rocm_attn.flash_attention(q, k, v, None, 0.1, True, -1)
    with pytest.raises(TypeError, match="key_valid"):
        torch.ops.rocm_attn.flash_attention(q, k, v, None, 0.1, False, 0, 0.0, torch.ones(1, 4))
    with pytest.raises(ValueError, match="key_valid"):
        torch.ops.rocm_attn.flash_attention(q, k, v, None, 0.1, False, 0, 0.0, torch.ones(1, 5) > 0)
    cu = torch.tensor([0, 4], dtype=torch.int64)
    with pytest.raises(ValueError, match="int32"):
        torch.ops.rocm_attn.flash_attn_varlen(q[0], k[0], v[0], cu, cu, 4, 4, 0.1, True)


def test_opcheck():
    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    mask = torch.rand(2, 1, 5, 7) > 0.2
    torch.library.opcheck(torch.ops.rocm_attn.flash_attention.default, (q, k, v, mask, 0.2, True, 0, 0.0))
    valid = key_valid_case("holes", 2, 7)
    torch.library.opcheck(torch.ops.rocm_attn.flash_attention.default,
                          (q, k, v, None, 0.2, True, 0, 0.0, valid))
    q, k, v, cq, ck = varlen_case([3, 5], [4, 9], 4, 2, 16, 16, torch.float32)
    torch.library.opcheck(torch.ops.rocm_attn.flash_attn_varlen.default, (q, k, v, cq, ck, 5, 9, 0.2, True))
