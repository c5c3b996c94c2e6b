"""The scorer's products on oneDNN equal F.linear's, forward and backward, and every case oneDNN
cannot take falls back (issue 32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.model import onednn_linear


def test_forward_and_both_gradients_equal_f_linear():
    x = torch.randn(3, 17, 24, requires_grad=True)
    w = torch.randn(40, 24, requires_grad=True)
    if not onednn_linear.usable(x, w):
        pytest.skip("this torch has no oneDNN linear kernel")
    grad = torch.randn(3, 17, 40)
    fast = onednn_linear.linear(x, w)
    fast_x, fast_w = torch.autograd.grad(fast, (x, w), grad)
    plain = F.linear(x, w)
    plain_x, plain_w = torch.autograd.grad(plain, (x, w), grad)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast_x, plain_x, atol=1e-5) and torch.allclose(fast_w, plain_w, atol=1e-5)
    assert fast.grad_fn is not None and type(fast.grad_fn).__name__ != type(plain.grad_fn).__name__


def test_what_onednn_cannot_take_goes_to_f_linear():
    x, w = torch.randn(5, 8), torch.randn(6, 8)
    assert not onednn_linear.usable(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 scoring
        assert not onednn_linear.usable(x, w)
        assert onednn_linear.linear(x, w).dtype == torch.bfloat16
    seen = []
    torch.func.vmap(lambda row: seen.append(onednn_linear.usable(row, w)) or onednn_linear.linear(row, w))(x)
    assert seen == [False]  # the per-user vmap path
    traced = torch.jit.trace(lambda a: onednn_linear.linear(a, w), (x,))  # the ONNX export traces
    assert "mkldnn" not in str(traced.graph)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_thin_product_is_x_times_w_transposed_with_or_without_onednn(dtype, monkeypatch):
    x, w = torch.randn(300, 70, dtype=dtype), torch.randn(9, 70, dtype=dtype)
    expected = x @ w.T
    fast = onednn_linear.times_transposed(x, w)  # oneDNN for float32 where torch has it
    assert fast.shape == (300, 9) and torch.allclose(fast, expected, atol=1e-4)
    monkeypatch.setattr(onednn_linear, "_KERNEL", None)  # a torch without it
    assert torch.allclose(onednn_linear.times_transposed(x, w), expected, atol=1e-4)
    assert torch.allclose(onednn_linear.times_transposed(x.T.contiguous().T, w), expected, atol=1e-4)


def test_without_the_weight_gradient_only_the_input_gradient_comes_back():
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(5, 6, requires_grad=True)
    if not onednn_linear.usable(x, w):
        pytest.skip("this torch has no oneDNN linear kernel")
    with onednn_linear.weight_gradient_unused():
        out = onednn_linear.linear(x, w)
    (grad_x,) = torch.autograd.grad(out.sum(), (x,))
    assert torch.allclose(grad_x, torch.autograd.grad(F.linear(x, w).sum(), (x,))[0], atol=1e-5)
    out = onednn_linear.linear(x, w)  # outside: both gradients as before
    assert torch.autograd.grad(out.sum(), (w,))[0].abs().sum() > 0


@pytest.mark.parametrize("width", [8, 2048])
def test_the_gram_is_each_rows_product_with_itself(width):
    x = torch.randn(3, 7, width)
    assert torch.allclose(onednn_linear.gram(x), torch.bmm(x, x.transpose(1, 2)), rtol=1e-4, atol=1e-3)
    assert onednn_linear.gram(x[:0]).shape == (0, 7, 7)
