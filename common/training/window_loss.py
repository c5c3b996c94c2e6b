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
The one-step path may also score in bfloat16 (`score-precision`): the scorer's products, two thirds of
a chunk's compute, take bfloat16 inputs with float32 sums; the softmax stays float32. The DP path
(ghost clipping, whose hooks read the scorer's call) always scores in float32.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from common.model.models import SequenceRecommender

# bfloat16 scoring pads the packed positions to a multiple of this: oneDNN keeps a compiled kernel per
# matrix shape, and a chunk's position count differs every time (~6 MB more a chunk, measured).
SCORE_ROWS_MULTIPLE = 512


def users_loss_sum(
    model: SequenceRecommender, inputs: torch.Tensor, targets: torch.Tensor, precision: str = "float32"
) -> torch.Tensor:
    """sum_u L_u of U users' windows, inputs/targets (U, W, T), target 0 = no prediction. Only the
    positions with a target are scored: the scorer sees them packed, (M, D), user after user.

    `precision = "bfloat16"`: the scorer's products take bfloat16 inputs (float32 sums and softmax)
    where the CPU multiplies bfloat16 natively (`native_bfloat16`); elsewhere float32."""
    U, W, T = inputs.shape
    inputs, targets = inputs.reshape(U * W, T), targets.reshape(U * W, T)
    valid = targets > 0  # (B, T)
    # Each window's positions weigh 1 / (its targets x the user's windows): the user's mean of means.
    window_weight = 1.0 / (valid.sum(1).clamp(min=1) * W)  # (B,)
    hidden = model.encode(inputs)  # (B, T, D)
    rows, items = hidden[valid], targets[valid] - 1  # (M, D), (M,)
    weight = window_weight.unsqueeze(1).expand(-1, T)[valid]  # (M,)
    if precision == "bfloat16" and bfloat16_scoring():
        pad = -len(rows) % SCORE_ROWS_MULTIPLE  # padded positions weigh 0: no loss, no gradient
        rows, items, weight = F.pad(rows, (0, 0, 0, pad)), F.pad(items, (0, pad)), F.pad(weight, (0, pad))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.score(rows)  # (M', N) bfloat16
    elif precision in ("float32", "bfloat16"):
        logits = model.score(rows)  # (M, N)
    else:
        raise ValueError(f"users_loss_sum: precision {precision!r} is not float32 or bfloat16")
    return weighted_cross_entropy(logits, items, weight)


_warned = False


def native_bfloat16() -> bool:
    """The CPU multiplies bfloat16 itself (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower
    than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def bfloat16_scoring() -> bool:
    """Whether bfloat16 scoring runs here; the first time it cannot, a warning says float32 runs instead."""
    global _warned
    if native_bfloat16():
        return True
    if not _warned:
        _warned = True
        logging.getLogger(__name__).warning(
            "score-precision = bfloat16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so the "
            "positions are scored in float32"
        )
    return False


def weighted_cross_entropy(logits: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_m weight_m x CE(logits_m, items_m); logits (M, N), items (M,) in 0..N-1, weight (M,).

    Backward once only: its gradient is written into the forward's own buffer."""
    return _WeightedCrossEntropy.apply(logits, items, weight)


class _WeightedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.logits_dtype = logits.dtype
        if logits.dtype == torch.float32:
            log_probs = torch.log_softmax(logits, dim=1)  # (M, N)
        else:  # bfloat16 scores: the softmax in float32, in the converted copy's own buffer (84 MB less)
            log_probs = logits.float()
            torch.log_softmax(log_probs, dim=1, out=log_probs)
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
        return out.to(ctx.logits_dtype), None, None
