"""Preprocess interactions into per-user item sequences, split leave-one-out, cut model windows.

Item index 0 is padding; real items are re-indexed 1..N (the mapping is kept so that
recommendations map back to original IDs). Every filter reports the rows it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common.data.interactions import ITEM, TIME, USER
from common.errors import DataError


@dataclass
class SequenceData:
    """All users' chronological histories in CSR form (flat items + offsets)."""

    items: np.ndarray  # (total,) int64 item indices in 1..num_items, users back to back
    offsets: np.ndarray  # (num_users + 1,) int64 start of each user's history in `items`
    user_ids: np.ndarray  # (num_users,) original user IDs
    item_ids: np.ndarray  # (num_items + 1,) original item ID of each index; [0] = -1 (padding)
    report: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, users: np.ndarray) -> SequenceData:
        """The same catalogue, restricted to some users (a client's partition)."""
        users = np.asarray(users, dtype=np.int64)
        parts = [self.sequence(u) for u in users]
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        items = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return SequenceData(items, offsets, self.user_ids[users], self.item_ids, {})

    # Leave-one-out: train = all but the last two, validation = second to last, test = last.
    def train_sequences(self) -> list[np.ndarray]:
        return [self.sequence(u)[:-2] for u in range(self.num_users)]

    def validation_cases(self) -> tuple[list[np.ndarray], np.ndarray]:
        seqs = [self.sequence(u) for u in range(self.num_users)]
        return [s[:-2] for s in seqs], np.array([s[-2] for s in seqs], dtype=np.int64)

    def test_cases(self) -> tuple[list[np.ndarray], np.ndarray]:
        seqs = [self.sequence(u) for u in range(self.num_users)]
        return [s[:-1] for s in seqs], np.array([s[-1] for s in seqs], dtype=np.int64)

    def item_counts(self, train_only: bool = True) -> np.ndarray:
        """(num_items + 1,) interaction counts per item index, from training parts by default."""
        seqs = self.train_sequences() if train_only else [self.sequence(u) for u in range(self.num_users)]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.num_items + 1)

    def save(self, path) -> None:
        np.savez(path, items=self.items, offsets=self.offsets, user_ids=self.user_ids, item_ids=self.item_ids)

    @classmethod
    def load(cls, path) -> SequenceData:
        with np.load(path) as z:
            return cls(z["items"], z["offsets"], z["user_ids"], z["item_ids"], {})


def build_sequences(
    frame: pd.DataFrame, *, min_item_count: int = 5, min_user_count: int = 3, source: str = "interactions"
) -> SequenceData:
    """Sort per user by time (stable), filter rare items then short users, re-index items."""
    steps = [
        {"step": "read", "rows": len(frame), "users": int(frame[USER].nunique()), "items": int(frame[ITEM].nunique())}
    ]

    def record(step: str, df: pd.DataFrame, before: int) -> None:
        steps.append(
            {
                "step": step,
                "rows": len(df),
                "dropped": before - len(df),
                "users": int(df[USER].nunique()),
                "items": int(df[ITEM].nunique()),
            }
        )

    before = len(frame)
    frame = frame.drop_duplicates([USER, ITEM, TIME])
    record("drop exact duplicate rows", frame, before)
    frame = frame.sort_values([USER, TIME], kind="stable")

    before = len(frame)
    counts = frame[ITEM].map(frame[ITEM].value_counts())
    frame = frame[counts >= min_item_count]
    record(f"items with >= {min_item_count} interactions", frame, before)

    before = len(frame)
    counts = frame[USER].map(frame[USER].value_counts())
    frame = frame[counts >= min_user_count]
    record(f"users with >= {min_user_count} interactions", frame, before)

    if frame.empty:
        raise DataError(
            f"{source}: no interactions left after filtering (min-item-count={min_item_count}, "
            f"min-user-count={min_user_count}); lower the thresholds or use more data"
        )

    item_ids = np.sort(frame[ITEM].unique())
    index = np.searchsorted(item_ids, frame[ITEM].to_numpy()) + 1
    user_col = frame[USER].to_numpy()
    boundaries = np.flatnonzero(np.diff(user_col)) + 1
    offsets = np.concatenate([[0], boundaries, [len(user_col)]]).astype(np.int64)
    report = {
        "source": source,
        "steps": steps,
        "users": len(offsets) - 1,
        "items": len(item_ids),
        "interactions": int(len(frame)),
        "min_item_count": min_item_count,
        "min_user_count": min_user_count,
    }
    return SequenceData(
        index.astype(np.int64),
        offsets,
        user_col[offsets[:-1]].astype(np.int64),
        np.concatenate([[-1], item_ids]).astype(np.int64),
        report,
    )


def left_pad(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """(B, max_len) int64: the last `max_len` items of each history, left-padded with 0."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = history[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out


def training_windows(
    sequences: list[np.ndarray], max_len: int, mode: str = "all", disjoint: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-item training examples: (inputs, targets, owners), inputs/targets (N, max_len).

    A window is `max_len + 1` consecutive items: inputs are its first `max_len`, targets the
    next item at every position (0 = padding, ignored by the loss). `mode="last"` keeps only the
    latest window per user (SASRec); `"all"` cuts the whole history into windows from the end.
    `owners[n]` is the user (row in `sequences`) window n came from. Consecutive windows share
    one item (the last target of one is the first input of the next) unless `disjoint`, which DP
    uses so that every interaction lies in exactly one sample.
    """
    stride = max_len + 1 if disjoint else max_len
    windows, owners = [], []
    for user, seq in enumerate(sequences):
        end = len(seq)
        while end >= 2:
            windows.append(seq[max(0, end - max_len - 1) : end])
            owners.append(user)
            if mode == "last":
                break
            end -= stride
    padded = left_pad(windows, max_len + 1)
    inputs, targets = padded[:, :-1].copy(), padded[:, 1:].copy()
    targets[inputs == 0] = 0  # no target without at least one real input item
    return inputs, targets, np.asarray(owners, dtype=np.int64)


def sequences_for_catalogue(frame, item_ids: np.ndarray, source: str = "interactions") -> SequenceData:
    """Sequences of a device's own interactions, indexed with the federation's item catalogue.

    Items outside the catalogue cannot be scored by the shared model: they are dropped and counted
    in the report, never silently lost.
    """
    lookup = {int(item): index for index, item in enumerate(item_ids) if index > 0}
    frame = frame.sort_values([USER, TIME], kind="stable")
    index = frame[ITEM].map(lookup)
    unknown = int(index.isna().sum())
    frame = frame.assign(index=index).dropna(subset=["index"])
    if frame.empty:
        raise DataError(
            f"{source}: none of its items are in the federation's catalogue ({unknown} unknown); the file and "
            "catalogue.json must use the same original item IDs"
        )
    user_col = frame[USER].to_numpy()
    boundaries = np.flatnonzero(np.diff(user_col)) + 1
    offsets = np.concatenate([[0], boundaries, [len(user_col)]]).astype(np.int64)
    report = {
        "source": source,
        "interactions": int(len(frame)),
        "unknown_items_dropped": unknown,
        "users": len(offsets) - 1,
    }
    return SequenceData(
        frame["index"].to_numpy().astype(np.int64),
        offsets,
        user_col[offsets[:-1]].astype(np.int64),
        np.asarray(item_ids, dtype=np.int64),
        report,
    )
