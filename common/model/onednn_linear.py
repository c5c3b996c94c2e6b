"""x @ w.T on oneDNN's float32 linear kernel, where that is safe: the item scorer's products.

torch's float32 matmul goes to MKL, which takes a slower code path on AMD CPUs. oneDNN's linear kernel,
in the same torch build, runs the scorer's products faster on the development box's Zen 5 (ML-1M
shapes, one thread: scores 54 -> 42 ms, their gradient to the hidden states 32 -> 13 ms, the
feature table's thin product 33 -> 9 ms). The gradient to the table stays an MKL product: oneDNN
would need a transposed copy of the (positions, items) gradient first.

Everything else takes `F.linear`: another dtype or device, autocast (bfloat16 scoring), tracing or
compiling (the ONNX export), and functorch's transforms (the cohort engine's per-user vmap), whose
wrapped tensors oneDNN cannot read.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_KERNEL = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _kernel(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, D) @ (N, D).T -> (M, N) on oneDNN."""
    return _KERNEL(x.contiguous(), w.contiguous(), None, "none", [], "")


def usable(*tensors: torch.Tensor) -> bool:
    """Whether oneDNN's kernel may take these tensors here (see the module's docstring)."""
    if _KERNEL is None or torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


_state = threading.local()


@contextmanager
def weight_gradient_unused():
    """Inside, the products skip their weight's gradient (autograd cannot tell a custom function which
    gradients a `torch.autograd.grad` call asked for). Ghost clipping asks only for the layers'
    output gradients and builds each user's weight gradient itself."""
    previous = getattr(_state, "skip", False)
    _state.skip = True
    try:
        yield
    finally:
        _state.skip = previous


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.skip_weight = getattr(_state, "skip", False)
        return _kernel(x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _kernel(flat, w.T).view(x.shape)  # (M, N) @ (N, D)
        if ctx.needs_input_grad[1] and not ctx.skip_weight:
            grad_w = flat.T @ x.reshape(-1, x.shape[-1])  # (N, M) @ (M, D): MKL, no transposed copy
        return grad_x, grad_w


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) without bias: (..., D) x (N, D) -> (..., N)."""
    return _Linear.apply(x, w) if usable(x, w) else F.linear(x, w)


WIDE = 1024  # columns from which the per-row oneDNN Gram was measured faster (64: bmm, 3,416: oneDNN)


def gram(x: torch.Tensor) -> torch.Tensor:
    """(B, n, K) -> (B, n, n), each x_b x_b^T: one oneDNN product per b beats MKL's batched one for a
    wide K (the item table's per-user Grams: 13 against 22 ms at ML-1M shapes); bmm otherwise."""
    if x.shape[-1] >= WIDE and usable(x):
        return torch.stack([_kernel(row, row) for row in x]) if len(x) else x.new_zeros(0, x.shape[1], x.shape[1])
    return torch.bmm(x, x.transpose(1, 2))


def times_transposed(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T, no gradient (ghost clipping's thin product). MKL's fallback takes the faster way round
    for a thin w: (w @ x.T).T is ~1.6x faster than x @ w.T there."""
    return _kernel(x, w) if usable(x, w) else (w @ x.T).T
