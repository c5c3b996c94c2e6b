"""Paired comparison of two models on the same users: the mean NDCG@K gain with a bootstrap interval.

Two models ranked on the same held-out items differ per user far less than either varies across
users, so the gain's interval is computed on per-user differences (resampling users), not from
two separate means; a gain under 10% needs this to be told apart from seed noise.
"""

from __future__ import annotations

import numpy as np


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each user's single held-out item from its 0-based rank."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_gain(base_ranks: np.ndarray, new_ranks: np.ndarray, k: int, draws: int = 2000, seed: int = 0) -> dict:
    """Mean NDCG@k of `new` minus `base` over the same users, with its 95% bootstrap interval."""
    base_ranks, new_ranks = np.asarray(base_ranks), np.asarray(new_ranks)
    if base_ranks.shape != new_ranks.shape or base_ranks.ndim != 1:
        raise ValueError(f"paired ranks must be two equal 1-D arrays, got {base_ranks.shape} and {new_ranks.shape}")
    if len(base_ranks) == 0:  # no users in this group: nothing to compare
        return {"mean": float("nan"), "interval_95": [float("nan"), float("nan")], "users": 0}
    diff = ndcg_per_user(new_ranks, k) - ndcg_per_user(base_ranks, k)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(1)
    return {
        "mean": float(diff.mean()),
        "interval_95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
        "users": int(len(diff)),
    }
