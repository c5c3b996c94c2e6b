"""Preprocessing into sequences, leave-one-out splits and training windows, on hand-made data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.interactions import load_interactions
from common.data.sequences import SequenceData, build_sequences, left_pad, training_windows

REPO = Path(__file__).resolve().parents[2]


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype("int64")


# Rows in file order (user, item, time). With min_item_count=2 and min_user_count=3:
#   row 9 duplicates row 1 exactly -> dropped first;
#   item 400 occurs once -> dropped by the item filter;
#   user 9 keeps 2 rows and user 2 keeps 1 -> both dropped by the user filter.
ROWS = [
    (5, 100, 3),  # 0
    (5, 200, 1),  # 1
    (5, 300, 3),  # 2: same time as row 0 -> stays after it (file order)
    (7, 100, 2),  # 3
    (7, 200, 2),  # 4: same time as row 3 -> stays after it
    (7, 300, 1),  # 5
    (7, 400, 9),  # 6
    (9, 100, 1),  # 7
    (9, 200, 2),  # 8
    (5, 200, 1),  # 9: exact duplicate of row 1
    (2, 300, 4),  # 10
]


@pytest.fixture
def data() -> SequenceData:
    return build_sequences(frame(ROWS), min_item_count=2, min_user_count=3, source="hand")


def test_build_sequences_sorts_filters_and_reindexes(data):
    # Items 100, 200, 300 -> indices 1, 2, 3 (sorted original IDs); 0 is padding.
    assert data.item_ids.tolist() == [-1, 100, 200, 300]
    assert data.num_items == 3
    assert data.user_ids.tolist() == [5, 7]
    assert data.offsets.tolist() == [0, 3, 6]
    # User 5 by time: 200@1, then 100@3 and 300@3 in file order. User 7: 300@1, 100@2, 200@2.
    assert data.sequence(0).tolist() == [2, 1, 3]
    assert data.sequence(1).tolist() == [3, 1, 2]
    assert data.items.dtype == np.int64 and data.offsets.dtype == np.int64
    # Mapping back through item_ids gives the original items in chronological order.
    assert data.item_ids[data.sequence(0)].tolist() == [200, 100, 300]


def test_build_sequences_report_counts_every_dropped_row(data):
    steps = data.report["steps"]
    assert [s["rows"] for s in steps] == [11, 10, 9, 6]
    assert [s.get("dropped") for s in steps] == [None, 1, 1, 3]
    assert [s["users"] for s in steps] == [4, 4, 4, 2]
    assert [s["items"] for s in steps] == [4, 4, 3, 3]
    assert steps[2]["step"] == "items with >= 2 interactions"
    assert steps[3]["step"] == "users with >= 3 interactions"
    assert (data.report["users"], data.report["items"], data.report["interactions"]) == (2, 3, 6)
    assert data.report["source"] == "hand"


def test_stable_sort_keeps_file_order_of_many_ties():
    rng = np.random.default_rng(0)
    items = rng.permutation(np.arange(1, 41))
    times = np.repeat([5, 1, 3, 2], 10)  # 4 timestamps, 10 ties each, out of order
    rows = [(1, int(i), int(t)) for i, t in zip(items, times)]
    rows += [(0, int(i), 0) for i in items]  # a second user, listed after but with a smaller ID
    data = build_sequences(frame(rows), min_item_count=1, min_user_count=3)
    order = np.argsort(times, kind="stable")  # numpy oracle: stable sort of the file order
    assert data.user_ids.tolist() == [0, 1]
    assert data.item_ids[data.sequence(1)].tolist() == items[order].tolist()
    assert data.item_ids[data.sequence(0)].tolist() == items.tolist()


def test_reindexing_maps_back_to_original_ids():
    rng = np.random.default_rng(1)
    original = rng.choice(10**9, size=30, replace=False)
    rows = [(u, int(original[(u * 7 + t) % 30]), t) for u in range(10) for t in range(12)]
    data = build_sequences(frame(rows), min_item_count=1, min_user_count=3)
    assert data.item_ids[0] == -1
    assert sorted(data.item_ids[1:].tolist()) == sorted(original.tolist())
    assert data.items.min() == 1 and data.items.max() == data.num_items == 30
    for u in range(10):
        expected = [int(original[(u * 7 + t) % 30]) for t in range(12)]
        assert data.item_ids[data.sequence(u)].tolist() == expected


def test_filters_with_nothing_left_raise_data_error():
    from common.errors import DataError

    with pytest.raises(DataError, match="min-item-count=5"):
        build_sequences(frame(ROWS), min_item_count=5, min_user_count=3, source="hand")


# --- leave-one-out --------------------------------------------------------------------------------


def hand_data() -> SequenceData:
    # User 0: items 4 2 7 1 3; user 1: items 5 6 1 (indices; catalogue of 7 items).
    items = np.array([4, 2, 7, 1, 3, 5, 6, 1], dtype=np.int64)
    offsets = np.array([0, 5, 8], dtype=np.int64)
    item_ids = np.array([-1, 11, 12, 13, 14, 15, 16, 17], dtype=np.int64)
    return SequenceData(items, offsets, np.array([10, 20], dtype=np.int64), item_ids)


def test_leave_one_out_split():
    data = hand_data()
    assert [s.tolist() for s in data.train_sequences()] == [[4, 2, 7], [5]]
    histories, targets = data.validation_cases()
    assert [h.tolist() for h in histories] == [[4, 2, 7], [5]]
    assert targets.tolist() == [1, 6]
    histories, targets = data.test_cases()
    assert [h.tolist() for h in histories] == [[4, 2, 7, 1], [5, 6]]
    assert targets.tolist() == [3, 1]
    assert data.lengths().tolist() == [5, 3]


def test_item_counts_use_training_parts_by_default():
    data = hand_data()
    assert data.item_counts().tolist() == [0, 0, 1, 0, 1, 1, 0, 1]  # from [4, 2, 7] and [5]
    assert data.item_counts(train_only=False).tolist() == [0, 2, 1, 1, 1, 1, 1, 1]


def test_subset_keeps_catalogue_and_histories():
    data = hand_data()
    part = data.subset(np.array([1]))
    assert part.num_users == 1 and part.user_ids.tolist() == [20]
    assert part.sequence(0).tolist() == [5, 6, 1]
    assert part.num_items == data.num_items
    np.testing.assert_array_equal(part.item_ids, data.item_ids)
    both = data.subset(np.array([1, 0]))
    assert [both.sequence(u).tolist() for u in range(2)] == [[5, 6, 1], [4, 2, 7, 1, 3]]
    empty = data.subset(np.array([], dtype=np.int64))
    assert empty.num_users == 0 and empty.offsets.tolist() == [0]


def test_save_load_round_trip(tmp_path):
    data = hand_data()
    data.save(tmp_path / "seq.npz")
    back = SequenceData.load(tmp_path / "seq.npz")
    for name in ("items", "offsets", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert [back.sequence(u).tolist() for u in range(back.num_users)] == [[4, 2, 7, 1, 3], [5, 6, 1]]


# --- windows and padding --------------------------------------------------------------------------


def test_left_pad():
    out = left_pad([np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=np.int64)], 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_training_windows_all():
    seqs = [np.arange(1, 8), np.array([8, 9]), np.array([5]), np.array([1, 2, 3, 4, 5])]
    inputs, targets, owners = training_windows(seqs, 3, "all")
    assert inputs.tolist() == [[4, 5, 6], [1, 2, 3], [0, 0, 8], [2, 3, 4], [0, 0, 1]]
    # A target whose input is padding is 0: [0, 8, 9] -> [0, 0, 9].
    assert targets.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 9], [3, 4, 5], [0, 0, 2]]
    assert owners.tolist() == [0, 0, 1, 3, 3]


def test_training_windows_last():
    seqs = [np.arange(1, 8), np.array([8, 9]), np.array([5]), np.array([1, 2, 3, 4, 5])]
    inputs, targets, owners = training_windows(seqs, 3, "last")
    assert inputs.tolist() == [[4, 5, 6], [0, 0, 8], [2, 3, 4]]
    assert targets.tolist() == [[5, 6, 7], [0, 0, 9], [3, 4, 5]]
    assert owners.tolist() == [0, 1, 3]


def test_training_windows_all_cover_every_transition_once():
    rng = np.random.default_rng(2)
    seqs = [rng.integers(1, 50, size=n) for n in (1, 2, 3, 4, 5, 9, 10, 11, 23)]
    max_len = 4
    inputs, targets, owners = training_windows(seqs, max_len, "all")
    got = []
    for row in range(len(inputs)):
        for t in np.flatnonzero(targets[row]):
            context = inputs[row, : t + 1]
            got.append((int(owners[row]), tuple(context[context > 0].tolist()), int(targets[row, t])))
    # Oracle: for every position p >= 1 of each sequence, target seq[p] after the items of its window.
    expected = []
    for user, seq in enumerate(seqs):
        for p in range(1, len(seq)):
            expected.append((user, int(seq[p])))
    assert sorted((u, y) for u, _, y in got) == sorted(expected)
    assert len(got) == sum(len(s) - 1 for s in seqs)
    for user, context, target in got:  # each context is the items right before the target
        seq = seqs[user].tolist()
        ends = [p for p in range(1, len(seq)) if seq[p] == target and tuple(seq[p - len(context) : p]) == context]
        assert ends, (user, context, target)


def test_training_windows_of_nothing():
    inputs, targets, owners = training_windows([np.array([3])], 5, "all")
    assert inputs.shape == targets.shape == (0, 5) and owners.shape == (0,)


# --- real data (skipped where the shared copy is absent) -------------------------------------------


def ml1m_file() -> Path | None:
    for base in (os.environ.get("FEDSEQREC_DATA_DIR", ""), str(REPO.parent / "shared" / "data")):
        if base and (Path(base) / "ml-1m" / "interactions.csv.gz").exists():
            return Path(base) / "ml-1m" / "interactions.csv.gz"
    return None


@pytest.mark.skipif(ml1m_file() is None, reason="ml-1m/interactions.csv.gz not available")
def test_ml1m_standard_preprocessing():
    data = build_sequences(load_interactions(ml1m_file()), min_item_count=5, min_user_count=3)
    assert data.report["steps"][0]["rows"] == 1_000_209
    assert data.num_users == 6_040
    assert data.num_items == 3_416
    assert len(data.items) == data.report["interactions"] == 999_611
    assert data.lengths().min() >= 3
