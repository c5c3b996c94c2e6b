"""Plain SGD and Adam for a device's local training, step for step what `torch.optim` computes on
the CPU (its single-tensor path), without `torch.optim`.

Why: the first `torch.optim` optimizer of a process imports `torch._dynamo` (its methods are wrapped
to keep the compiler out), ~1.1 s of CPU on the 2-core development box. A SuperNode starts a fresh
ClientApp process for every message, so a cross-silo device paid that on every training message.
Opacus' DP-SGD wraps a `torch.optim` optimizer and keeps it (`common.privacy.dpsgd`).
tests/unit/test_optimizers.py holds these to `torch.optim`'s results bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class PlainOptimizer:
    """The part of `torch.optim.Optimizer` that the training loop uses: zero_grad() and step()."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr ({lr}) and weight_decay ({weight_decay}) must be >= 0")
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay = float(lr), float(weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _grad(self, p: torch.Tensor) -> torch.Tensor:
        if p.grad.is_sparse:
            raise ValueError("sparse gradients are not supported: use dense embeddings")
        return p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self._update(p, self._grad(p))

    def _update(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError


class SGD(PlainOptimizer):
    """torch.optim.SGD without momentum: p -= lr * (grad + weight_decay * p)."""

    def _update(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        p.add_(grad, alpha=-self.lr)


class Adam(PlainOptimizer):
    """torch.optim.Adam (betas 0.9 and 0.999, eps 1e-8, coupled weight decay, no amsgrad)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), float(eps)
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps: dict[torch.Tensor, int] = {}

    def _update(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        if p not in self.state:
            zeros = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(2)]
            self.state[p] = (zeros[0], zeros[1])  # the first and second moments
            self.steps[p] = 0
        exp_avg, exp_avg_sq = self.state[p]
        self.steps[p] += 1
        step = float(self.steps[p])
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step_size = self.lr / (1 - self.beta1**step)
        bias_correction2_sqrt = (1 - self.beta2**step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


def plain_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> PlainOptimizer:
    """ "adam" or "sgd" (the run config's `local-optimizer`)."""
    if name not in ("adam", "sgd"):
        raise ValueError(f"optimizer {name!r} is not one of adam, sgd")
    return (Adam if name == "adam" else SGD)(params, lr=lr, weight_decay=weight_decay)
