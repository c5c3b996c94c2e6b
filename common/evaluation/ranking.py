"""Full-catalogue ranking evaluation: every item is a candidate, never sampled negatives.

Items already in the user's history are masked (configurable), except the target itself, as in
SASRec's protocol. Ties count against the target (pessimistic), so a constant scorer cannot
look good.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from common.data.sequences import SequenceData, left_pad
from common.errors import ConfigError
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.metrics import all_metrics, catalogue_metrics, user_metrics
from common.evaluation.reranking import Reranker
from common.evaluation.user_groups import group_report
from common.model.models import SequenceRecommender

# (B, T) item indices -> (B, N) scores. A score function may carry `max_len`, the longest input it
# takes (model_scores: the model's own); ranking feeds it the last max_len items of each history.
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def model_scores(model: SequenceRecommender) -> ScoreFn:
    def score(inputs: torch.Tensor) -> torch.Tensor:
        hidden = model.encode(inputs)[:, -1]  # (B, D): state after the latest item
        return model.score(hidden)  # (B, N)

    score.max_len = model.config.max_len  # one source: the model's context length
    return score


def popularity_scores(item_counts: np.ndarray) -> ScoreFn:
    popularity = torch.as_tensor(item_counts[1:], dtype=torch.float32)  # (N,)

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return popularity.to(inputs.device).expand(inputs.shape[0], -1).clone()

    score.max_len = 1  # looks at no history
    return score


def context_length(score_fn: ScoreFn, max_len: int | None) -> int:
    """`max_len` if given (a shorter context), else the one the score function carries."""
    if max_len is None:
        max_len = getattr(score_fn, "max_len", None)
        if max_len is None:
            raise ValueError(
                "max_len is needed for a score function that does not carry one (model_scores carries the model's)"
            )
    return max_len


@torch.no_grad()
def rank_targets(
    score_fn: ScoreFn,
    histories: list[np.ndarray],
    targets: np.ndarray,
    *,
    num_items: int,
    max_len: int | None = None,
    top_k: int = 10,
    mask_seen: bool = True,
    batch_size: int = 512,
    device: str = "cpu",
    rerank: Reranker | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target among items 1..N, and each user's top-K item indices.

    With `rerank`, the top-K lists are the re-ranker's pick from the `rerank.candidates` best
    items, and a target's rank is its place in that list, or at least K when the list misses it
    (metrics at K only need to know whether and where it is in the list)."""
    if top_k > num_items:
        raise ConfigError(f"config key 'top-k': {top_k} is more than the {num_items} items in the catalogue")
    max_len = context_length(score_fn, max_len)
    ranks, tops = [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        inputs = torch.as_tensor(left_pad(chunk, max_len), device=device)  # (B, T)
        target = torch.as_tensor(targets[start : start + batch_size], device=device)  # (B,)
        scores = score_fn(inputs).float()  # (B, N)
        scores = scores.masked_fill(scores.isnan(), float("-inf"))  # a diverged model must not look perfect
        scores = torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores], 1)  # (B, N + 1): col 0 = padding
        if mask_seen:
            longest = max(1, max(len(h) for h in chunk))
            seen = torch.as_tensor(left_pad(chunk, longest), device=device)  # (B, H) whole history
            target_score = scores.gather(1, target[:, None])  # (B, 1)
            scores.scatter_(1, seen, float("-inf"))
            scores.scatter_(1, target[:, None], target_score)  # the target itself stays rankable
            scores[:, 0] = float("-inf")
        target_score = scores.gather(1, target[:, None])  # (B, 1)
        rank = (scores >= target_score).sum(1) - 1  # (B,)
        if rerank is None:
            top = scores[:, 1:].topk(top_k, dim=1).indices + 1  # (B, K), never padding
        else:
            best, candidates = scores[:, 1:].topk(min(rerank.candidates, num_items), dim=1)  # (B, C)
            top = rerank(candidates + 1, best, top_k)  # (B, K)
            found = top == target[:, None]  # (B, K)
            rank = torch.where(found.any(1), found.float().argmax(1), rank.clamp_min(top_k))
        ranks.append(rank.cpu().numpy())
        tops.append(top.cpu().numpy())
    return np.concatenate(ranks), np.concatenate(tops)


def ranked_lists(
    score_fn: ScoreFn, data: SequenceData, split: str, users: np.ndarray | None = None, **options
) -> tuple[np.ndarray, np.ndarray]:
    """`rank_targets` on the validation or test cases of every user (or of `users`)."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be validation or test, got {split!r}")
    histories, targets = data.validation_cases() if split == "validation" else data.test_cases()
    if users is not None:
        histories, targets = [histories[u] for u in users], targets[users]
    return rank_targets(score_fn, histories, targets, num_items=data.num_items, **options)


def evaluate(
    score_fn: ScoreFn,
    data: SequenceData,
    split: str,
    *,
    max_len: int | None = None,
    top_k: int = 10,
    mask_seen: bool = True,
    batch_size: int = 512,
    device: str = "cpu",
    users: np.ndarray | None = None,
    rerank: Reranker | None = None,
    stats: ItemStatistics | None = None,
) -> dict[str, float]:
    """Accuracy and beyond-accuracy metrics on the validation or test target of every user (or of
    `users`). `stats` (training statistics of the items) is computed from `data` unless given."""
    ranks, tops = ranked_lists(
        score_fn,
        data,
        split,
        users,
        max_len=max_len,
        top_k=top_k,
        mask_seen=mask_seen,
        batch_size=batch_size,
        device=device,
        rerank=rerank,
    )
    return all_metrics(ranks, tops, top_k, stats if stats is not None else ItemStatistics.from_data(data))


def evaluate_by_group(
    score_fn: ScoreFn,
    data: SequenceData,
    split: str,
    groups: dict[str, np.ndarray],
    *,
    max_len: int | None = None,
    top_k: int = 10,
    mask_seen: bool = True,
    batch_size: int = 512,
    device: str = "cpu",
    rerank: Reranker | None = None,
    stats: ItemStatistics | None = None,
    users: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, dict]]:
    """`evaluate` on every user (or on `users`), and from the same lists each group's metrics and the
    gaps between groups (`groups`: attribute -> (U,) label per user, see common.evaluation.user_groups)."""
    stats = stats if stats is not None else ItemStatistics.from_data(data)
    if users is not None:
        groups = {attribute: labels[users] for attribute, labels in groups.items()}
    ranks, tops = ranked_lists(
        score_fn,
        data,
        split,
        users,
        max_len=max_len,
        top_k=top_k,
        mask_seen=mask_seen,
        batch_size=batch_size,
        device=device,
        rerank=rerank,
    )
    return grouped_metrics(ranks, tops, top_k, stats, groups)


def grouped_metrics(
    ranks: np.ndarray, tops: np.ndarray, k: int, stats: ItemStatistics, groups: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, dict]]:
    """`all_metrics` of every user, and each group's means with the gaps between groups."""
    per_user = user_metrics(ranks, tops, k, stats)
    by_group = {attribute: group_report(per_user, labels) for attribute, labels in groups.items()}
    means = {name: float(values.mean()) for name, values in per_user.items()}
    return means | catalogue_metrics(tops, k, stats), by_group


def item_exposure(
    score_fn: ScoreFn,
    data: SequenceData,
    item: int,
    *,
    max_len: int | None = None,
    top_k: int = 10,
    batch_size: int = 512,
) -> float:
    """Share of users with `item` (a model index) in their top-k, recommending from their whole
    history (the test split's input) with seen items masked: what an item-promotion attack buys."""
    histories, _ = data.test_cases()
    no_target = np.zeros(len(histories), dtype=np.int64)  # padding: every seen item masked, none kept rankable
    _, tops = rank_targets(
        score_fn,
        histories,
        no_target,
        max_len=max_len,
        num_items=data.num_items,
        top_k=top_k,
        mask_seen=True,
        batch_size=batch_size,
    )
    return float((tops == item).any(axis=1).mean())
