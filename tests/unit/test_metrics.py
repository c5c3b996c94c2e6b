"""Top-K metrics and full-catalogue ranking against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.data.sequences import SequenceData, left_pad
from common.errors import ConfigError
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.metrics import all_metrics, coverage, novelty, ranking_metrics
from common.evaluation.ranking import evaluate, popularity_scores, rank_targets


def test_ranking_metrics_by_hand():
    got = ranking_metrics(np.array([0, 3, 12]), 10)
    # Ranks 0 and 3 are hits at K=10, rank 12 is not.
    assert got["hr@10"] == pytest.approx(2 / 3)
    assert got["ndcg@10"] == pytest.approx((1 / math.log2(0 + 2) + 1 / math.log2(3 + 2)) / 3)
    assert got["mrr@10"] == pytest.approx((1 / 1 + 1 / 4) / 3)
    assert got["precision@10"] == pytest.approx((1 / 10 + 1 / 10) / 3)
    assert got["recall@10"] == pytest.approx(2 / 3)
    f1_hit = 2 * (1 / 10) * 1 / (1 / 10 + 1)  # = 2/11
    assert got["f1@10"] == pytest.approx(2 * f1_hit / 3)
    assert set(got) == {"hr@10", "ndcg@10", "mrr@10", "precision@10", "recall@10", "f1@10"}


def test_ranking_metrics_cutoff_is_exclusive():
    got = ranking_metrics(np.array([4, 5]), 5)  # rank 4 is the 5th place: a hit; rank 5 is not
    assert got["hr@5"] == pytest.approx(1 / 2)
    assert got["ndcg@5"] == pytest.approx(1 / math.log2(6) / 2)
    assert got["mrr@5"] == pytest.approx(1 / 5 / 2)


def test_ranking_metrics_perfect_and_empty_hits():
    perfect = ranking_metrics(np.zeros(4, dtype=int), 1)
    assert perfect["hr@1"] == perfect["ndcg@1"] == perfect["mrr@1"] == perfect["f1@1"] == 1.0
    miss = ranking_metrics(np.array([7, 8]), 3)
    assert all(value == 0.0 for value in miss.values())


def test_coverage():
    top = np.array([[1, 2], [2, 3], [3, 1]])
    assert coverage(top, num_items=5) == pytest.approx(3 / 5)


def test_novelty():
    item_users = np.array([0, 3, 1, 0])  # users (of 3) who had items 1, 2, 3 in training
    top = np.array([[1, 2], [2, 3]])
    # p = (users + 1) / (3 + 1): item 1 -> 1 (0 bits), item 2 -> 1/2 (1 bit), item 3 -> 1/4 (2 bits)
    assert novelty(top, item_users, num_users=3) == pytest.approx((0 + 1 + 1 + 2) / 4)


def test_all_metrics_uses_first_k_columns():
    ranks = np.array([0, 1])
    top = np.array([[1, 2, 4], [2, 3, 4]])  # column 3 (item 4) lies beyond K = 2
    # Training histories of 3 users: item 1 had by all three, item 2 by one, items 3 and 4 by nobody.
    stats = ItemStatistics.from_sequences([np.array([1, 2]), np.array([1]), np.array([1])], num_items=4)
    got = all_metrics(ranks, top, 2, stats)
    assert got["hr@2"] == 1.0
    assert got["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert got["coverage@2"] == pytest.approx(3 / 4)
    assert got["novelty@2"] == pytest.approx((0 + 1 + 1 + 2) / 4)


# --- rank_targets -----------------------------------------------------------------------------------

N = 6  # catalogue: items 1..6
SCORES = torch.tensor(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # user 0: item 1 best ... item 6 worst
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # user 1: all tied
        [0.0, 9.0, 0.0, 0.0, 8.0, 7.0],  # user 2
    ]
)
HISTORIES = [np.array([1, 3]), np.array([2, 5]), np.array([4, 2, 4, 1, 5])]
TARGETS = np.array([4, 5, 6])  # user 1's target 5 is also in its history (a repeat)


def score_fn(max_len, seen_inputs):
    """SCORES row by row, in the order rank_targets asks for users; records what the model saw."""

    def score(inputs: torch.Tensor) -> torch.Tensor:
        start = sum(len(x) for x in seen_inputs)
        seen_inputs.append(inputs.clone())
        return SCORES[start : start + len(inputs)].clone()

    return score


def run(mask_seen=True, top_k=3, batch_size=512, max_len=4):
    inputs = []
    ranks, tops = rank_targets(
        score_fn(max_len, inputs),
        HISTORIES,
        TARGETS,
        max_len=max_len,
        num_items=N,
        top_k=top_k,
        mask_seen=mask_seen,
        batch_size=batch_size,
    )
    return ranks, tops, inputs


def test_rank_targets_masks_seen_items_but_not_the_target():
    ranks, tops, inputs = run(mask_seen=True)
    # User 0: items 1, 3 masked; ahead of item 4 (score 3) is only item 2 -> rank 1.
    # User 1: item 2 masked, item 5 (the target) kept; 1, 3, 4, 6 tie with it -> rank 4 (ties count against).
    # User 2: 1, 2, 4, 5 masked; items 3 (0.0) and 6 (7.0) remain; 6 is best -> rank 0.
    assert ranks.tolist() == [1, 4, 0]
    assert tops[0].tolist() == [2, 4, 5]
    assert tops[2][:2].tolist() == [6, 3]
    assert set(tops[1].tolist()) <= {1, 3, 4, 5, 6}
    # The model saw the last max_len items, left-padded; masking used the whole history.
    assert torch.cat(inputs).tolist() == left_pad(HISTORIES, 4).tolist()


def test_rank_targets_without_masking():
    ranks, tops, _ = run(mask_seen=False)
    # User 0: items 1, 2, 3 score above item 4. User 1: all 6 tie -> rank 5. User 2: 2 and 5 above 6.
    assert ranks.tolist() == [3, 5, 2]
    assert tops[0].tolist() == [1, 2, 3]
    assert tops[2].tolist() == [2, 5, 6]


def test_rank_targets_ties_are_pessimistic_for_constant_scores():
    def constant(inputs):
        return torch.zeros(len(inputs), N)

    ranks, _ = rank_targets(constant, HISTORIES, TARGETS, max_len=4, num_items=N, top_k=2, mask_seen=False)
    assert ranks.tolist() == [N - 1] * 3  # every item ties with the target, all count against it
    assert ranking_metrics(ranks, 2)["hr@2"] == 0.0


def test_rank_targets_batches_agree():
    one = run(batch_size=1)
    full = run(batch_size=512)
    np.testing.assert_array_equal(one[0], full[0])
    np.testing.assert_array_equal(one[1][[0, 2]], full[1][[0, 2]])


def test_padding_column_is_never_recommended():
    def very_negative(inputs):
        return torch.full((len(inputs), N), -1e30)

    for mask_seen in (False, True):
        _, tops = rank_targets(very_negative, HISTORIES, TARGETS, max_len=4, num_items=N, top_k=N, mask_seen=mask_seen)
        assert tops.min() >= 1 and tops.max() <= N
    # Even when masking leaves fewer than K finite scores (user 2 has seen 4 of 6 items).
    _, tops = rank_targets(
        lambda x: SCORES[: len(x)].clone(), HISTORIES, TARGETS, max_len=4, num_items=N, top_k=N, mask_seen=True
    )
    assert tops.min() >= 1
    assert [sorted(row.tolist()) for row in tops] == [list(range(1, N + 1))] * 3


def test_top_k_larger_than_catalogue_is_a_config_error():
    with pytest.raises(ConfigError, match="top-k"):
        rank_targets(lambda x: torch.zeros(len(x), N), HISTORIES, TARGETS, max_len=4, num_items=N, top_k=N + 1)


def test_evaluate_popularity_by_hand():
    # User 0: 1 2 3 4 5, user 1: 2 2 3 1 ... train parts [1, 2, 3] and [2, 2].
    items = np.array([1, 2, 3, 4, 5, 2, 2, 3, 1], dtype=np.int64)
    data = SequenceData(items, np.array([0, 5, 9]), np.array([7, 8]), np.arange(-1, 5), {})
    counts = data.item_counts()
    assert counts.tolist() == [0, 1, 3, 1, 0, 0]
    got = evaluate(popularity_scores(counts), data, "test", max_len=3, top_k=2)
    # User 0: target 5 (count 0); unseen items: 5 only -> rank 0 among what is left.
    # User 1: target 1 (count 1); seen 2, 3 masked; unseen 4 (count 0), 5 (count 0) -> rank 0.
    assert got["hr@2"] == 1.0 and got["ndcg@2"] == 1.0
    got = evaluate(popularity_scores(counts), data, "test", max_len=3, top_k=2, mask_seen=False)
    # User 0: items 2 (3), 1 (1), 3 (1) beat 5 (0), and 4 (0) ties -> rank 4.
    # User 1: item 2 (3) beats 1, item 3 (1) ties -> rank 2.
    assert got["hr@2"] == 0.0
    assert got["mrr@2"] == 0.0


def test_nan_scores_rank_last():
    # A diverged model (NaN scores) must not look perfect: NaN compares false with everything.
    def diverged(inputs):
        scores = SCORES[: len(inputs)].clone()
        scores[0] = float("nan")  # user 0: every score NaN
        scores[2, 5] = float("nan")  # user 2: only the target (item 6) is NaN
        return scores

    for mask_seen in (True, False):
        ranks, tops = rank_targets(diverged, HISTORIES, TARGETS, max_len=4, num_items=N, top_k=2, mask_seen=mask_seen)
        assert ranks[0] >= 2 and ranks[2] >= 2
        assert ranking_metrics(ranks[[0, 2]], 2) == ranking_metrics(np.array([N, N]), 2)
        assert tops.min() >= 1


def test_a_model_scorer_carries_its_context_length_and_a_plain_function_must_name_one():
    from common.evaluation.ranking import model_scores
    from common.model.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("gru", num_items=N, max_len=3, emb_dim=4, hidden_dim=4, num_layers=1)).eval()
    implied = rank_targets(model_scores(model), HISTORIES, TARGETS, num_items=N, top_k=2)
    named = rank_targets(model_scores(model), HISTORIES, TARGETS, num_items=N, top_k=2, max_len=3)
    assert all(np.array_equal(a, b) for a, b in zip(implied, named))
    with pytest.raises(ValueError, match="max_len is needed"):
        rank_targets(lambda x: torch.zeros(len(x), N), HISTORIES, TARGETS, num_items=N, top_k=2)
