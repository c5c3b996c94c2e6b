"""Top-K metrics for next-item prediction with one held-out target per user.

Inputs are 0-based ranks of each user's target in the full catalogue (seen items masked) and
each user's top-K recommended item indices. All functions are vectorised numpy.

Beside accuracy, every evaluation reports what the lists look like (docs/beyond-accuracy.md):
coverage, novelty, intra-list diversity (ILD), long-tail share, Gini of exposure and average
recommendation popularity, all measured against training statistics (common.evaluation.item_stats), never
against the model being judged.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from common.evaluation.item_stats import ItemStatistics


def user_ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """HR, NDCG, MRR, Precision, Recall and F1 at K, per user."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    precision = hit / k  # one relevant item: a hit fills 1 of K slots
    recall = hit.astype(float)  # ... and recovers the only relevant item
    return {
        f"hr@{k}": hit.astype(float),
        f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0),
        f"mrr@{k}": np.where(hit, 1.0 / (ranks + 1.0), 0.0),
        f"precision@{k}": precision,
        f"recall@{k}": recall,
        f"f1@{k}": np.where(hit, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0),
    }


def ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR, NDCG, MRR, Precision, Recall and F1 at K, averaged over users."""
    return {name: float(values.mean()) for name, values in user_ranking_metrics(ranks, k).items()}


def coverage(top_items: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top-K list."""
    return float(len(np.unique(top_items)) / num_items)


def novelty(top_items: np.ndarray, item_users: np.ndarray, num_users: int) -> float:
    """Mean self-information -log2 p(i) of recommended items, p(i) = share of users who had i.

    Add-one smoothing keeps items nobody had in training finite.
    """
    return float(user_novelty(top_items, item_users, num_users).mean())


def user_novelty(top_items: np.ndarray, item_users: np.ndarray, num_users: int) -> np.ndarray:
    p = (item_users[top_items] + 1.0) / (num_users + 1.0)
    return np.mean(-np.log2(p), axis=1)  # (U,)


# Dense profile rows ILD may hold at once (float32): 128 MB. ML-1M's whole catalogue x users fits.
ILD_DENSE_LIMIT = 1 << 25


def user_ild(top_items: np.ndarray, profiles: sp.csr_matrix, chunk: int = 128) -> np.ndarray:
    """(U,) intra-list diversity: mean pairwise dissimilarity 1 - cos(i, j) over each list's pairs.

    With unit profiles, sum_{i != j} cos = |sum_i v_i|^2 - sum_i |v_i|^2: a list costs K dense
    profile rows instead of K^2 products, and no N x N matrix is built. The recommended items'
    rows are made dense once if they fit in ILD_DENSE_LIMIT, else per chunk of users. Rows of zero
    norm (items nobody had) count as dissimilar to everything. Needs K >= 2.
    """
    users, k = top_items.shape
    if k < 2:
        raise ValueError("intra-list diversity needs lists of at least two items")
    norms2 = np.asarray(profiles.multiply(profiles).sum(axis=1)).ravel()  # 1, or 0 for empty profiles
    distinct, local = np.unique(top_items, return_inverse=True)
    local = local.reshape(top_items.shape)
    dense = profiles[distinct].toarray() if len(distinct) * profiles.shape[1] <= ILD_DENSE_LIMIT else None
    out = np.empty(users)
    for start in range(0, users, chunk):
        block = top_items[start : start + chunk]  # (B, K)
        if dense is not None:
            rows = dense[local[start : start + chunk]]  # (B, K, width)
        else:
            chunk_items, chunk_local = np.unique(block, return_inverse=True)
            rows = profiles[chunk_items].toarray()[chunk_local.reshape(block.shape)]
        summed = rows.sum(axis=1)  # (B, width): each list's sum of profiles
        pair_cos = np.einsum("bw,bw->b", summed, summed) - norms2[block].sum(axis=1)  # over pairs i != j
        out[start : start + chunk] = 1.0 - pair_cos / (k * (k - 1))
    return out


def user_tail_share(top_items: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """(U,) share of each list's slots that hold long-tail items."""
    return tail[top_items].mean(axis=1)


def user_popularity(top_items: np.ndarray, item_users: np.ndarray, num_users: int) -> np.ndarray:
    """(U,) average recommendation popularity (ARP): the mean share of training users who had each
    recommended item (a share rather than a count, so that datasets of any size compare)."""
    return (item_users[top_items] / max(num_users, 1)).mean(axis=1)


def exposure_gini(top_items: np.ndarray, num_items: int) -> float:
    """Gini coefficient of how often each catalogue item (1..N) is recommended: 0 when every item
    is shown equally often, towards 1 when a few items take every slot."""
    exposure = np.sort(np.bincount(top_items.ravel(), minlength=num_items + 1)[1:]).astype(float)
    total = exposure.sum()
    if total == 0:
        return 0.0
    rank = np.arange(1, num_items + 1)
    return float(np.sum((2 * rank - num_items - 1) * exposure) / (num_items * total))


def user_metrics(ranks: np.ndarray, top_items: np.ndarray, k: int, stats: ItemStatistics) -> dict[str, np.ndarray]:
    """Every metric that is a mean over users, per user (groups and means are taken from these)."""
    top = top_items[:, :k]
    out = user_ranking_metrics(ranks, k)
    out[f"novelty@{k}"] = user_novelty(top, stats.item_users, stats.num_users)
    if k >= 2:
        out[f"ild@{k}"] = user_ild(top, stats.profiles)
    out[f"long-tail@{k}"] = user_tail_share(top, stats.long_tail())
    out[f"popularity@{k}"] = user_popularity(top, stats.item_users, stats.num_users)
    return out


def all_metrics(ranks: np.ndarray, top_items: np.ndarray, k: int, stats: ItemStatistics) -> dict[str, float]:
    """Means of `user_metrics`, plus `catalogue_metrics`."""
    means = {name: float(values.mean()) for name, values in user_metrics(ranks, top_items, k, stats).items()}
    return means | catalogue_metrics(top_items, k, stats)


def catalogue_metrics(top_items: np.ndarray, k: int, stats: ItemStatistics) -> dict[str, float]:
    """The metrics of all lists together: catalogue coverage and the Gini of exposure."""
    return {
        f"coverage@{k}": coverage(top_items[:, :k], stats.num_items),
        f"gini@{k}": exposure_gini(top_items[:, :k], stats.num_items),
    }
