"""Next-item training losses.

Full cross-entropy over the catalogue at every position (SASRec+ / "Turning Dross Into Gold",
Klenitskiy & Vasilev 2023), or sampled softmax for very large catalogues. By default the loss is a
mean over each sequence's positions, then a mean over sequences: every sequence is one sample, as
DP-SGD (Opacus, loss_reduction="mean") requires. `reduction="token"` averages over all of a
batch's positions instead (the SASRec+ recipe; without per-sample gradients only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.model.models import SequenceRecommender


def _per_sequence_mean(token_loss: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    sums = torch.zeros(batch, device=token_loss.device).index_add(0, rows, token_loss)
    counts = torch.zeros(batch, device=token_loss.device).index_add(0, rows, torch.ones_like(token_loss))
    present = counts > 0
    return (sums[present] / counts[present]).sum() / batch


def next_item_loss(
    model: SequenceRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "ce",
    num_negatives: int = 256,
    per_sample_grads: bool = False,
    reduction: str = "sequence",
) -> torch.Tensor:
    """Mean next-item loss of a batch; inputs/targets (B, T), target 0 = no prediction.

    `per_sample_grads=True` scores every position through the model's scorer module so Opacus
    can attribute gradients to sequences; otherwise only real positions are scored (faster).
    """
    B = inputs.shape[0]
    model = getattr(model, "_module", model)  # Opacus' GradSampleModule: its hooks sit on the submodules
    hidden = model.encode(inputs)  # (B, T, D)
    valid = targets > 0  # (B, T)
    rows = valid.nonzero()[:, 0]  # (M,) sequence of each real position
    if loss == "ce":
        if per_sample_grads:
            logits = model.score(hidden)  # (B, T, N)
            token_loss = F.cross_entropy(logits[valid], targets[valid] - 1, reduction="none")  # (M,)
        else:
            logits = model.score(hidden[valid])  # (M, N)
            token_loss = F.cross_entropy(logits, targets[valid] - 1, reduction="none")  # (M,)
    elif loss == "sampled-softmax":
        if per_sample_grads:
            raise ValueError("sampled-softmax does not support per-sample gradients; use loss = ce with DP")
        table = model.output_table()  # (N + 1, r): r = emb_dim unless the table is factorised; + side features
        h = model.to_table_space(hidden[valid])  # (M, r)
        positives = targets[valid]  # (M,)
        negatives = torch.randint(1, table.shape[0], (num_negatives,), device=inputs.device)  # (K,)
        pos_logit = (h * table[positives]).sum(-1, keepdim=True)  # (M, 1)
        neg_logit = h @ table[negatives].T  # (M, K)
        neg_logit = neg_logit.masked_fill(negatives[None, :] == positives[:, None], float("-inf"))
        token_loss = F.cross_entropy(
            torch.cat([pos_logit, neg_logit], 1), torch.zeros_like(positives), reduction="none"
        )  # (M,)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose ce or sampled-softmax")
    if reduction == "token":
        if per_sample_grads:
            raise ValueError("reduction = token couples a batch's sequences; per-sample gradients need sequence")
        return token_loss.sum() / max(len(token_loss), 1)
    if reduction != "sequence":
        raise ValueError(f"unknown reduction {reduction!r}; choose sequence or token")
    return _per_sequence_mean(token_loss, rows, B)
