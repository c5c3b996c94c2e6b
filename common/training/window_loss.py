"""The summed loss of a cohort's users, computed for speed in the batched cohort paths.

The batched paths (`common.training.cohort._one_sgd_step`, `common.training.ghost_clipping`) need sum_u L_u, each
user's L_u the mean over its windows of the mean next-item cross-entropy over the window's
positions with a target: the value `common.training.cohort.user_loss` gives user by user. Two costs dominate
it on a full catalogue and both are cut here:
- Scoring padding. A short history's window is mostly padding and each scored position costs a
  (D x N) product plus an N-wide softmax: only positions with a target are scored.
- The softmax's memory passes. `F.cross_entropy`'s backward fills an (M, N) zero tensor, scatters
  into it, then runs log-softmax's own backward over two more (M, N) tensors. Here the gradient,
  w (softmax - onehot), is made in place in the forward's log-softmax buffer: exp, scale, subtract.
"""

from __future__ import annotations

import torch

from common.model.models import SequenceRecommender


def users_loss_sum(model: SequenceRecommender, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_u L_u of U users' windows, inputs/targets (U, W, T), target 0 = no prediction. Only the
    positions with a target are scored: the scorer sees them packed, (M, D), user after user."""
    U, W, T = inputs.shape
    inputs, targets = inputs.reshape(U * W, T), targets.reshape(U * W, T)
    valid = targets > 0  # (B, T)
    # Each window's positions weigh 1 / (its targets x the user's windows): the user's mean of means.
    window_weight = 1.0 / (valid.sum(1).clamp(min=1) * W)  # (B,)
    hidden = model.encode(inputs)  # (B, T, D)
    logits = model.score(hidden[valid])  # (M, N)
    weight = window_weight.unsqueeze(1).expand(-1, T)[valid]  # (M,)
    return weighted_cross_entropy(logits, targets[valid] - 1, weight)


def weighted_cross_entropy(logits: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_m weight_m x CE(logits_m, items_m); logits (M, N), items (M,) in 0..N-1, weight (M,).

    Backward once only: its gradient is written into the forward's own buffer."""
    return _WeightedCrossEntropy.apply(logits, items, weight)


class _WeightedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1)  # (M, N)
        ctx.save_for_backward(log_probs, items, weight)
        ctx.spent = False
        return -(weight * log_probs.gather(1, items.unsqueeze(1)).squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.spent:
            raise RuntimeError("weighted_cross_entropy: backward runs once (its gradient reuses the forward's buffer)")
        ctx.spent = True
        log_probs, items, weight = ctx.saved_tensors
        scale = weight * grad  # (M,)
        out = log_probs.exp_()  # softmax, in place: nothing else holds this buffer
        out.mul_(scale.unsqueeze(1))
        out[torch.arange(len(items)), items] -= scale
        return out, None, None
