"""Beyond-accuracy metrics, re-ranking and fairness groups against numpy oracles and hand cases."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data.sequences import SequenceData
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError, DataError
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.metrics import exposure_gini, user_ild, user_popularity, user_tail_share
from common.evaluation.ranking import evaluate, evaluate_by_group, popularity_scores, rank_targets
from common.evaluation.reranking import build_reranker, long_tail_boost, mmr
from common.evaluation.user_groups import (
    MIN_GAP_USERS,
    UNKNOWN,
    activity_groups,
    demographic_groups,
    group_report,
    read_users_file,
    user_groups_for,
)
from fedseqrec.cli import main
from fedseqrec.launch.federate import federate
from simulations.benchmarks.quality.bench_beyond import genre_profiles

# --- item statistics ---------------------------------------------------------------------------------


def random_histories(rng, users: int, items: int) -> list[np.ndarray]:
    return [rng.integers(1, items + 1, size=rng.integers(0, 8)) for _ in range(users)]


def test_item_profiles_give_the_cosine_of_user_sets():
    rng = np.random.default_rng(0)
    histories = random_histories(rng, 12, 7)
    stats = ItemStatistics.from_sequences(histories, num_items=7)
    owners = [{u for u, h in enumerate(histories) if i in h} for i in range(8)]
    similarity = stats.similarity_matrix()
    for i, j in itertools.product(range(1, 8), repeat=2):
        expected = (
            len(owners[i] & owners[j]) / np.sqrt(len(owners[i]) * len(owners[j])) if owners[i] and owners[j] else 0
        )
        assert similarity[i, j] == pytest.approx(expected, abs=1e-6)
    assert stats.item_users.tolist() == [len(o) for o in owners]
    assert stats.counts.sum() == sum(len(h) for h in histories)


def test_long_tail_is_the_least_popular_items_holding_a_fifth_of_interactions():
    # counts of items 1..5: 50, 30, 10, 6, 4 (total 100); from the bottom: 4, 10, 20 <= 20; 50 > 20
    histories = [np.repeat(np.arange(1, 6), [50, 30, 10, 6, 4])]
    stats = ItemStatistics.from_sequences(histories, num_items=5)
    assert stats.long_tail().tolist() == [False, False, False, True, True, True]


# --- metrics against oracles ---------------------------------------------------------------------------


def test_ild_matches_a_pairwise_numpy_oracle():
    rng = np.random.default_rng(1)
    stats = ItemStatistics.from_sequences(random_histories(rng, 20, 9), num_items=9)
    dense = stats.profiles.toarray()
    tops = np.stack([rng.choice(np.arange(1, 10), size=4, replace=False) for _ in range(7)])
    expected = [
        np.mean([1.0 - dense[a] @ dense[b] for a, b in itertools.permutations(top, 2)]) for top in tops
    ]  # an item nobody had has a zero profile: cos 0, dissimilarity 1
    np.testing.assert_allclose(user_ild(tops, stats.profiles, chunk=3), expected, rtol=1e-5)


def test_ild_by_hand():
    # Items 1 and 2 are had by exactly the same users (cos 1), item 3 by others (cos 0).
    stats = ItemStatistics.from_sequences([np.array([1, 2]), np.array([1, 2]), np.array([3])], num_items=3)
    got = user_ild(np.array([[1, 2], [1, 3], [1, 2]]), stats.profiles)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="two items"):
        user_ild(np.array([[1]]), stats.profiles)


def gini_oracle(values: np.ndarray) -> float:
    """Mean absolute difference over all pairs / (2 x mean)."""
    return np.abs(values[:, None] - values[None, :]).mean() / (2 * values.mean())


def test_exposure_gini_matches_the_mean_difference_definition():
    rng = np.random.default_rng(2)
    tops = rng.integers(1, 12, size=(30, 3))
    exposure = np.bincount(tops.ravel(), minlength=12)[1:].astype(float)
    assert exposure_gini(tops, 11) == pytest.approx(gini_oracle(exposure))
    assert exposure_gini(np.array([[1, 2], [3, 4]]), 4) == pytest.approx(0.0)  # every item once
    assert exposure_gini(np.array([[1], [1]]), 4) == pytest.approx(3 / 4)  # one item takes every slot


def test_tail_share_and_popularity_by_hand():
    tail = np.array([False, False, True, True])
    tops = np.array([[1, 2], [2, 3]])
    np.testing.assert_allclose(user_tail_share(tops, tail), [0.5, 1.0])
    item_users = np.array([0, 4, 2, 1])
    np.testing.assert_allclose(user_popularity(tops, item_users, 4), [(1 + 0.5) / 2, (0.5 + 0.25) / 2])


def tiny_data(users: int = 60, items: int = 25, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, items + 1, size=rng.integers(4, 30)) for _ in range(users)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return SequenceData(np.concatenate(seqs), offsets, np.arange(1, users + 1), np.arange(-1, items + 1), {})


def test_evaluate_reports_beyond_accuracy_metrics_beside_accuracy():
    data = tiny_data()
    counts = data.item_counts()
    got = evaluate(popularity_scores(counts), data, "test", top_k=5)
    stats = ItemStatistics.from_data(data)
    _, tops = rank_targets(popularity_scores(counts), *data.test_cases(), num_items=data.num_items, top_k=5)
    assert got["ild@5"] == pytest.approx(user_ild(tops, stats.profiles).mean())
    assert got["long-tail@5"] == pytest.approx(user_tail_share(tops, stats.long_tail()).mean())
    assert got["gini@5"] == pytest.approx(exposure_gini(tops, data.num_items))
    assert got["popularity@5"] == pytest.approx(user_popularity(tops, stats.item_users, data.num_users).mean())
    assert {"ndcg@5", "hr@5", "coverage@5", "novelty@5"} <= set(got)


# --- re-ranking -------------------------------------------------------------------------------------------


def test_lambda_zero_keeps_the_model_order():
    items = torch.tensor([[4, 2, 7, 1, 3]])
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    similarity = torch.rand(8, 8)
    tail = torch.tensor([False, True, False, True, False, False, False, True])
    assert mmr(items, scores, 3, lam=0.0, similarity=similarity).tolist() == [[4, 2, 7]]
    assert long_tail_boost(items, scores, 3, lam=0.0, tail=tail).tolist() == [[4, 2, 7]]


def test_mmr_by_hand():
    # Candidates 1, 2, 3 with relevance 1, 0.9 (scaled), 0; 1 and 2 are identical, 3 unlike both.
    similarity = torch.zeros(4, 4)
    similarity[1, 2] = similarity[2, 1] = 1.0
    items, scores = torch.tensor([[1, 2, 3]]), torch.tensor([[10.0, 9.0, 0.0]])
    # lambda 0.3: after item 1, item 2 gains 0.7 * 0.9 - 0.3 * 1 = 0.33, more than item 3's 0.7 * 0 - 0.3 * 0 = 0.
    assert mmr(items, scores, 2, lam=0.3, similarity=similarity).tolist() == [[1, 2]]
    # lambda 0.6: item 2 gains 0.4 * 0.9 - 0.6 = -0.24 < item 3's 0: the unlike item is chosen.
    assert mmr(items, scores, 2, lam=0.6, similarity=similarity).tolist() == [[1, 3]]


def test_long_tail_boost_by_hand():
    items, scores = torch.tensor([[1, 2, 3]]), torch.tensor([[10.0, 5.0, 0.0]])  # relevance 1, 0.5, 0
    tail = torch.tensor([False, False, False, True])
    # lambda 0.4: items 1, 2, 3 score 0.6, 0.3, 0.4 (the tail item overtakes item 2 only); lambda 0.7: 0.3, 0.15, 0.7.
    assert long_tail_boost(items, scores, 3, lam=0.4, tail=tail).tolist() == [[1, 3, 2]]
    assert long_tail_boost(items, scores, 3, lam=0.7, tail=tail).tolist() == [[3, 1, 2]]


def test_reranked_ranks_are_the_target_place_in_the_new_list():
    data = tiny_data(seed=3)
    stats = ItemStatistics.from_data(data)
    counts = data.item_counts()
    histories, targets = data.test_cases()
    plain_ranks, _ = rank_targets(popularity_scores(counts), histories, targets, num_items=data.num_items, top_k=5)
    reranker = build_reranker("long-tail", 0.9, 20, 5, stats)
    ranks, tops = rank_targets(
        popularity_scores(counts), histories, targets, num_items=data.num_items, top_k=5, rerank=reranker
    )
    for rank, plain, top, target in zip(ranks, plain_ranks, tops, targets):
        if target in top:
            assert rank == list(top).index(target)
        else:
            assert rank == max(plain, 5)  # not in the list: no hit at K, whatever it was before
    _, plain_tops = rank_targets(popularity_scores(counts), histories, targets, num_items=data.num_items, top_k=5)
    tail = stats.long_tail()
    assert tail[tops].mean() > tail[plain_tops].mean()


def test_mmr_raises_intra_list_diversity():
    data = tiny_data(seed=4)
    counts = data.item_counts()
    stats = ItemStatistics.from_data(data)
    plain = evaluate(popularity_scores(counts), data, "test", top_k=5, stats=stats)
    diverse = evaluate(
        popularity_scores(counts), data, "test", top_k=5, stats=stats, rerank=build_reranker("mmr", 0.8, 20, 5, stats)
    )
    assert diverse["ild@5"] > plain["ild@5"]


@pytest.mark.parametrize(
    "flat,needle",
    [
        ({"rerank-lambda": 1.5}, "config key 'rerank-lambda'"),
        ({"rerank-candidates": 5, "top-k": 10}, "config key 'rerank-candidates'"),
        ({"rerank": "xquad"}, "key 'rerank' must be one of none, mmr, long-tail"),
        ({"activity-groups": 0}, "config key 'activity-groups'"),
        ({"user-groups": "gender"}, "key 'user-groups' must be one of auto, activity, none"),
    ],
)
def test_bad_beyond_accuracy_keys_name_the_key(flat, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        RunConfig.from_flat(flat)


# --- fairness groups -----------------------------------------------------------------------------------


def test_activity_groups_are_quantile_bins_of_history_length():
    lengths = np.array([3, 3, 4, 5, 8, 9, 20, 50])
    labels = activity_groups(lengths, 4)
    assert len(set(labels)) == 4
    order = sorted(set(labels))
    # bins hold increasing, non-overlapping length ranges and each label names its range
    for label in order:
        members = lengths[labels == label]
        assert label.endswith(f"{members.min()}-{members.max()} items")
    maxima = [lengths[labels == label].max() for label in order]
    minima = [lengths[labels == label].min() for label in order]
    assert all(high < low for high, low in zip(maxima[:-1], minima[1:]))
    assert len(set(activity_groups(np.full(10, 7), 4))) == 1  # one length: one bin, never an empty one


def test_group_report_gap_by_hand():
    per_user = {"ndcg@10": np.array([0.1, 0.3, 0.2, 0.0]), "hr@10": np.array([1.0, 0.0, 1.0, 1.0])}
    labels = np.array(["a", "a", "b", "c"])
    got = group_report(per_user, labels, min_users=1)
    assert got["groups"]["a"] == {"users": 2, "ndcg@10": pytest.approx(0.2), "hr@10": 0.5}
    se = np.sqrt(np.var([0.1, 0.3]) / 2 + 0.0 / 1)  # group c has one user: no spread
    assert got["gaps"]["ndcg@10"] == {
        "gap": pytest.approx(0.2),
        "gap_se": pytest.approx(se),
        "highest": "a",
        "lowest": "c",
    }
    assert got["gaps"]["hr@10"]["gap"] == pytest.approx(0.5)
    small = group_report(per_user, labels, min_users=2)  # only group a is large enough: no gap
    assert small["gaps"] == {} and small["groups"]["c"]["users"] == 1


USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"


def test_users_file_gives_demographic_labels(tmp_path):
    path = tmp_path / "users.dat"
    path.write_text(USERS_DAT)
    groups = demographic_groups(np.array([3, 1, 9]), read_users_file(path))
    assert groups["gender"].tolist() == ["male", "female", UNKNOWN]
    assert groups["age"].tolist() == ["25-34", "under 18", UNKNOWN]
    assert groups["occupation"].tolist() == ["scientist", "K-12 student", UNKNOWN]


@pytest.mark.parametrize(
    "content,needle",
    [
        ("1::F::1::10\n", ":1: not a MovieLens users.dat line"),
        ("1::F::1::10::1\n2::X::1::10::1\n", ":2: not a MovieLens users.dat line"),
        ("1::F::17::10::1\n", ":1: not a MovieLens users.dat line"),
        ("\n", "users file has no users"),
    ],
)
def test_malformed_users_file_is_a_data_error_naming_the_line(tmp_path, content, needle):
    path = tmp_path / "users.dat"
    path.write_text(content)
    with pytest.raises(DataError, match=needle) as info:
        read_users_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_data_without_users_file_gets_activity_groups_and_a_named_file_must_exist(tmp_path):
    data = tiny_data()
    groups, source = user_groups_for(RunConfig.from_flat({"data": "synthetic"}), data)
    assert set(groups) == {"activity"} and "no users file" in source
    missing = tmp_path / "users.dat"
    with pytest.raises(DataError, match="users file not found"):
        user_groups_for(RunConfig.from_flat({"data": "synthetic", "users-file": str(missing)}), data)
    (tmp_path / "users.dat").write_text(USERS_DAT)
    groups, _ = user_groups_for(RunConfig.from_flat({"users-file": str(missing)}), data)
    assert set(groups) == {"activity", "gender", "age", "occupation"}
    assert user_groups_for(RunConfig.from_flat({"user-groups": "none"}), data)[0] == {}


def test_evaluate_by_group_agrees_with_evaluate_and_weights_groups_by_size():
    data = tiny_data(users=4 * MIN_GAP_USERS)  # 3 bins of more than MIN_GAP_USERS each: all count in the gap
    counts = data.item_counts()
    groups = {"activity": activity_groups(data.lengths() - 2, 3)}
    overall, by_group = evaluate_by_group(popularity_scores(counts), data, "test", groups, top_k=5)
    assert overall == pytest.approx(evaluate(popularity_scores(counts), data, "test", top_k=5))
    report = by_group["activity"]["groups"]
    assert sum(g["users"] for g in report.values()) == data.num_users
    for name in ("ndcg@5", "ild@5", "long-tail@5"):
        weighted = sum(g["users"] * g[name] for g in report.values()) / data.num_users
        assert weighted == pytest.approx(overall[name])
    assert set(by_group["activity"]["gaps"]) >= {"ndcg@5", "ild@5"}


# --- end to end through the CLI ------------------------------------------------------------------------


def test_train_writes_beyond_accuracy_and_group_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "interactions.csv"
    synthetic_interactions(40, 15, mean_length=8, seed=2).to_csv(csv, index=False)
    fast = ["--quiet", "--max-len", "8", "--emb-dim", "8", "--num-layers", "1", "--epochs", "1", "--top-k", "5"]
    out = tmp_path / "run"
    args = ["train", "--data", str(csv), "--out", str(out), *fast, "--rerank", "mmr", "--rerank-candidates", "10"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert {"ild@5", "long-tail@5", "gini@5", "popularity@5"} <= set(metrics[split])
    assert set(metrics["metrics_by_group"]["attributes"]) == {"activity"}
    capsys.readouterr()
    bad = tmp_path / "users.dat"
    bad.write_text("1::F::1\n")
    assert main(["train", "--data", str(csv), "--out", str(tmp_path / "r2"), *fast, "--users-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "users.dat:1: not a MovieLens users.dat line" in err[0]


def test_genre_ild_by_hand(tmp_path):
    movies = tmp_path / "movies.dat"
    movies.write_bytes("10::A (1999)::Comedy\n20::B (2000)::Comedy|Drama\n30::C::Horror\n".encode("latin-1"))
    profiles = genre_profiles(movies, np.array([-1, 10, 20, 30, 40]))  # item 40 has no line: no genres
    got = user_ild(np.array([[1, 2], [1, 3], [2, 4]]), profiles)
    np.testing.assert_allclose(got, [1 - 1 / np.sqrt(2), 1.0, 1.0], rtol=1e-6)


def test_federate_reads_a_named_users_file_before_starting_anything(tmp_path):
    toml = tmp_path / "run.toml"
    missing = tmp_path / "users.dat"
    toml.write_text(f'data = "synthetic"\nusers-file = "{missing}"\nout-dir = "{tmp_path / "run"}"\n')
    with pytest.raises(DataError, match="users file not found"):
        federate(str(toml))
    assert not (tmp_path / "run" / "superlink.log").exists()
