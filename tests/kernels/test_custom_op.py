"""kernels/custom_op.py: ops registered without torch.library.custom_op's per-call wrappers behave like
custom ops (schema, fake impl, torch.compile, opcheck) and refuse to backpropagate."""

import pytest
import torch

from rocm_attn.kernels.custom_op import custom_op


@custom_op("_test_scale_add")
def scale_add(x: torch.Tensor, y: torch.Tensor | None = None, scale: float = 2.0) -> torch.Tensor:
    return x * scale + (y if y is not None else 0)


@scale_add.register_fake
def _(x, y=None, scale=2.0):
    return torch.empty_like(x)


@custom_op("_test_split")
def split_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x + 1, x - 1


@split_pair.register_fake
def _(x):
    return torch.empty_like(x), torch.empty_like(x)


@custom_op("_test_write", mutates_args=("buf",))
def write_into(x: torch.Tensor, buf: torch.Tensor) -> None:
    buf.copy_(x.detach())


@write_into.register_fake
def _(x, buf) -> None:
    return None


def test_schema_and_call():
    op = torch.ops.rocm_attn._test_scale_add.default
    assert "Tensor? y=None" in str(op._schema) and "float scale=2." in str(op._schema)
    assert "Tensor(a1!) buf" in str(torch.ops.rocm_attn._test_write.default._schema)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(scale_add(x, y, scale=3.0), x * 3 + y)  # the object calls the op
    torch.testing.assert_close(torch.ops.rocm_attn._test_scale_add(x), x * 2)
    assert scale_add.impl(x).shape == x.shape and scale_add.__doc__ == scale_add.impl.__doc__
    buf = torch.zeros(3, 4)
    assert write_into(x, buf) is None
    torch.testing.assert_close(buf, x)


def test_opcheck():
    torch.library.opcheck(torch.ops.rocm_attn._test_scale_add.default, (torch.randn(2, 5), torch.randn(2, 5), 0.5))
    torch.library.opcheck(torch.ops.rocm_attn._test_split.default, (torch.randn(4),))
    torch.library.opcheck(torch.ops.rocm_attn._test_write.default, (torch.randn(4), torch.zeros(4)))


def test_compiles_through_the_fake_impl():
    def f(x, y):
        a, b = split_pair(scale_add(x, y))
        return a * b

    x, y = torch.randn(8, 3), torch.randn(8, 3)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, y), f(x, y))


def test_forward_with_grad_works_and_backward_raises():
    x = torch.randn(3, requires_grad=True)
    out = scale_add(x)  # a model run without torch.no_grad(): the forward is fine
    torch.testing.assert_close(out.detach(), x.detach() * 2)
    a, b = split_pair(x)
    assert a.requires_grad and b.requires_grad
    with pytest.raises(RuntimeError, match="rocm_attn._test_scale_add has no backward"):
        out.sum().backward()
    with pytest.raises(RuntimeError, match="has no backward"):
        (a + b).sum().backward()
    with torch.no_grad():
        assert not scale_add(x).requires_grad


@pytest.mark.skipif(not hasattr(torch.Tag, "cudagraph_unsafe"), reason="this torch has no cudagraph_unsafe tag")
def test_tags_reach_the_op():
    """hf_paged_attention reads a live cache outside the graph: CUDA graphs must not capture it."""
    import rocm_attn.hf_cache  # noqa: F401  (registers the op)

    assert torch.Tag.cudagraph_unsafe in torch.ops.rocm_attn.hf_paged_attention.default.tags
    assert torch.Tag.cudagraph_unsafe not in torch.ops.rocm_attn.ptpc_scaled_mm.default.tags
