"""Optional re-ranking of the model's top candidates, trading a little accuracy for diversity or
long-tail exposure (run-config keys `rerank`, `rerank-lambda`, `rerank-candidates`).

Each re-ranker takes every user's `rerank-candidates` best items with their scores and returns K
of them. One parameter lambda in [0, 1] weighs the beyond-accuracy goal against relevance, the
same way for both, so that lambda = 0 keeps the model's order and larger values trade more:

- `mmr` (Carbonell & Goldstein 1998): greedily add the candidate maximising
  (1 - lambda) * relevance - lambda * max similarity to the items already chosen, with the
  training co-occurrence cosine of common.evaluation.item_stats (the similarity ILD measures).
- `long-tail`: a long-tail boost, (1 - lambda) * relevance + lambda * [item in the long tail]:
  a tail item overtakes a head item whose relevance is higher by less than lambda / (1 - lambda).

Relevance is the model's score min-max scaled to [0, 1] within each user's candidates, so lambda
means the same for any model's score scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import ConfigError
from common.evaluation.item_stats import ItemStatistics

# A dense item-item similarity is (N + 1)^2 floats: 47 MB for ML-1M, too much past this size.
MAX_MMR_ITEMS = 20_000


def relevance(scores: torch.Tensor) -> torch.Tensor:
    """(B, C) scores -> [0, 1] within each row; candidates with non-finite scores (masked items a
    short candidate list had to include) get -1, below every real candidate."""
    finite = scores.isfinite()
    low = scores.masked_fill(~finite, float("inf")).min(1, keepdim=True).values
    high = scores.masked_fill(~finite, float("-inf")).max(1, keepdim=True).values
    scaled = (scores - low) / (high - low).clamp_min(1e-12)
    return scaled.masked_fill(~finite, -1.0)


def mmr(items: torch.Tensor, scores: torch.Tensor, k: int, *, lam: float, similarity: torch.Tensor) -> torch.Tensor:
    """(B, C) candidates and scores -> (B, k) items chosen by maximal marginal relevance."""
    rel = relevance(scores)  # (B, C)
    pair_sim = similarity[items[:, :, None], items[:, None, :]]  # (B, C, C)
    rows = torch.arange(len(items))
    closest = torch.zeros_like(rel)  # (B, C): max similarity to the chosen items so far
    chosen = torch.zeros_like(rel, dtype=torch.bool)
    picks = []
    for _ in range(k):
        gain = ((1 - lam) * rel - lam * closest).masked_fill(chosen, float("-inf"))
        pick = gain.argmax(1)  # (B,)
        picks.append(pick)
        chosen[rows, pick] = True
        closest = torch.maximum(closest, pair_sim[rows, pick])  # (B, C)
    return items.gather(1, torch.stack(picks, 1))


def long_tail_boost(
    items: torch.Tensor, scores: torch.Tensor, k: int, *, lam: float, tail: torch.Tensor
) -> torch.Tensor:
    """(B, C) candidates and scores -> (B, k) items by relevance plus a bonus for tail items."""
    boosted = (1 - lam) * relevance(scores) + lam * tail[items].float()  # (B, C)
    order = torch.sort(boosted, dim=1, descending=True, stable=True).indices[:, :k]  # ties keep the model's order
    return items.gather(1, order)


@dataclass(frozen=True)
class Reranker:
    """A configured re-ranker: `candidates` items in, `k` out (`rank_targets` calls it)."""

    method: str
    lam: float
    candidates: int
    similarity: torch.Tensor | None = None  # (N + 1, N + 1), mmr only
    tail: torch.Tensor | None = None  # (N + 1,) bool, long-tail only

    def __call__(self, items: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        if self.method == "mmr":
            return mmr(items, scores, k, lam=self.lam, similarity=self.similarity.to(items.device))
        return long_tail_boost(items, scores, k, lam=self.lam, tail=self.tail.to(items.device))


def build_reranker(method: str, lam: float, candidates: int, top_k: int, stats: ItemStatistics) -> Reranker | None:
    """The re-ranker the settings ask for (None for `none`), with its training statistics."""
    if method == "none":
        return None
    if candidates < top_k:
        raise ConfigError(f"config key 'rerank-candidates': {candidates} is fewer than top-k ({top_k}); raise it")
    if method == "mmr":
        if stats.num_items > MAX_MMR_ITEMS:
            raise ConfigError(
                f"config key 'rerank': mmr builds a dense item-item similarity, too large for "
                f"{stats.num_items} items (at most {MAX_MMR_ITEMS}); use rerank = long-tail"
            )
        return Reranker(method, lam, candidates, similarity=torch.from_numpy(stats.similarity_matrix()))
    if method == "long-tail":
        return Reranker(method, lam, candidates, tail=torch.from_numpy(np.asarray(stats.long_tail())))
    raise ConfigError(f"config key 'rerank': unknown method {method!r}; use none, mmr or long-tail")


def reranker_for(train_settings, stats: ItemStatistics) -> Reranker | None:
    """From the run config's train group (rerank, rerank-lambda, rerank-candidates, top-k)."""
    t = train_settings
    return build_reranker(t.rerank, t.rerank_lambda, t.rerank_candidates, t.top_k, stats)
