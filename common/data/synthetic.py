"""Synthetic interaction histories with structure a sequential model can learn.

Items have Zipf popularity; each user belongs to a taste cluster; the next item follows a
fixed per-cluster successor of the previous item with probability `p_follow`, otherwise a
popular item of the cluster. A model that reads the order beats popularity by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.data.interactions import ITEM, TIME, USER


def synthetic_interactions(
    num_users: int = 500,
    num_items: int = 200,
    *,
    mean_length: int = 30,
    num_clusters: int = 4,
    p_follow: float = 0.7,
    seed: int = 0,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    successors = np.stack([rng.permutation(num_items) for _ in range(num_clusters)])
    cluster_items = [rng.permutation(num_items) for _ in range(num_clusters)]
    rows = []
    for user in range(num_users):
        cluster = rng.integers(num_clusters)
        # Each cluster favours its own shuffled copy of the popularity curve.
        weights = np.empty(num_items)
        weights[cluster_items[cluster]] = popularity
        weights /= weights.sum()
        length = max(5, int(rng.poisson(mean_length)))
        item = rng.choice(num_items, p=weights)
        for step in range(length):
            rows.append((user + 1, int(item) + 1, step))
            item = successors[cluster, item] if rng.random() < p_follow else rng.choice(num_items, p=weights)
    return pd.DataFrame(rows, columns=[USER, ITEM, TIME])
