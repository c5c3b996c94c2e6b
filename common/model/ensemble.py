"""Rank-time ensembles of trained next-item models (different architectures or runs).

Two fusions, both scale-free, because an LSTM's and a SASRec's logits live on different scales:

- `zscore`: each member's scores over the catalogue are standardised per user (mean 0, std 1),
  then averaged with the weights. Keeps how much more a member prefers one item than another,
  so a confident member counts more where it is confident.
- `rrf`: reciprocal-rank fusion (Cormack et al. 2009), sum of w / (k + rank), rank 1 = best.
  Uses only the order, so it is robust to a member with odd score shapes; k = 60 as in the paper.

Both are `torch` only and stateless, so the same module scores in evaluation and runs on the device
as one ONNX graph (`EnsembleScores`). Ranks are taken over the whole catalogue, seen items
included; evaluation masks seen items afterwards, as for a single model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from common.model.models import SequenceRecommender

METHODS = ("zscore", "rrf")
RRF_K = 60.0


def zscores(scores: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) per-row standardised scores (a constant row becomes all zeros)."""
    mean = scores.mean(dim=1, keepdim=True)  # (B, 1)
    std = scores.std(dim=1, keepdim=True, unbiased=False)  # (B, 1)
    return (scores - mean) / std.clamp_min(1e-12)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) float rank of each item per row, 1 = highest score (ties in either order)."""
    order = scores.topk(scores.shape[1], dim=1).indices  # (B, N) item at each rank; TopK in ONNX (argsort is not)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=scores.dtype)
    return torch.zeros_like(scores).scatter(1, order, positions.expand_as(scores))  # (B, N)


def fuse(member_scores: Sequence[torch.Tensor], weights: Sequence[float], method: str) -> torch.Tensor:
    """Weighted fusion of members' (B, N) scores; higher = better."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(METHODS)}")
    if len(member_scores) != len(weights) or not member_scores:
        raise ValueError(f"{len(member_scores)} members but {len(weights)} weights")
    total = None
    for scores, weight in zip(member_scores, weights):
        part = zscores(scores) if method == "zscore" else 1.0 / (RRF_K + ranks(scores))
        total = weight * part if total is None else total + weight * part
    return total


class EnsembleScores(nn.Module):
    """(B, L) left-padded items -> (B, N) fused next-item scores; each member reads its own last
    max_len items. Members are used as given (pass export-friendly twins to export)."""

    def __init__(self, members: Sequence[SequenceRecommender], weights: Sequence[float], method: str):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(METHODS)}")
        sizes = {m.config.num_items for m in members}
        if len(sizes) != 1:
            raise ValueError(f"members score different catalogues ({sorted(sizes)} items)")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.method = method
        self.max_len = max(m.config.max_len for m in members)
        self.num_items = sizes.pop()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        scores = []
        for member in self.members:
            hidden = member.encode(items[:, -member.config.max_len :])[:, -1]  # (B, D)
            scores.append(member.score(hidden))  # (B, N)
        return fuse(scores, self.weights, self.method)


def ensemble_scores(members: Sequence[SequenceRecommender], weights: Sequence[float], method: str):
    """The ensemble as an evaluation ScoreFn (carries max_len, like model_scores)."""
    module = EnsembleScores(members, weights, method).eval()

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return module(inputs)

    score.max_len = module.max_len
    return score
