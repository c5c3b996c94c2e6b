"""Top-K metrics for next-item prediction with one held-out target per user.

Inputs are 0-based ranks of each user's target in the full catalogue (seen items masked) and
each user's top-K recommended item indices. All functions are vectorised numpy.
"""

from __future__ import annotations

import numpy as np


def ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR, NDCG, MRR, Precision, Recall and F1 at K, averaged over users."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    mrr = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    precision = hit / k  # one relevant item: a hit fills 1 of K slots
    recall = hit.astype(float)  # ... and recovers the only relevant item
    f1 = np.where(hit, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(ndcg.mean()),
        f"mrr@{k}": float(mrr.mean()),
        f"precision@{k}": float(precision.mean()),
        f"recall@{k}": float(recall.mean()),
        f"f1@{k}": float(f1.mean()),
    }


def coverage(top_items: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top-K list."""
    return float(len(np.unique(top_items)) / num_items)


def novelty(top_items: np.ndarray, item_users: np.ndarray, num_users: int) -> float:
    """Mean self-information -log2 p(i) of recommended items, p(i) = share of users who had i.

    Add-one smoothing keeps items nobody had in training finite.
    """
    p = (item_users[top_items] + 1.0) / (num_users + 1.0)
    return float(np.mean(-np.log2(p)))


def all_metrics(
    ranks: np.ndarray, top_items: np.ndarray, k: int, *, num_items: int, item_users: np.ndarray, num_users: int
) -> dict[str, float]:
    out = ranking_metrics(ranks, k)
    out[f"coverage@{k}"] = coverage(top_items[:, :k], num_items)
    out[f"novelty@{k}"] = novelty(top_items[:, :k], item_users, num_users)
    return out
