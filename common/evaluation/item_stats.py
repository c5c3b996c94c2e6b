"""What the beyond-accuracy metrics and re-rankers know of the items, from training parts only.

Nothing here uses side data, so every dataset gets the same metrics, and nothing comes from the
model, so two models (a private and a non-private one) are judged by the same yardstick:

- popularity: training interactions and training users per item;
- the long tail: the least popular items that together hold `TAIL_SHARE` (20%) of the training
  interactions (Pareto's 80/20 split, as in Abdollahpouri et al.'s long-tail work);
- item profiles: each item's binary vector of the training users who had it, L2-normalised, so
  that a dot product is the cosine similarity of item-based collaborative filtering
  (|U_i n U_j| / sqrt(|U_i| |U_j|)). An item nobody had in training has a zero profile:
  similarity 0 to everything (no evidence that it is like anything).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

TAIL_SHARE = 0.2  # the long tail holds this share of the training interactions


@dataclass(frozen=True)
class ItemStatistics:
    counts: np.ndarray  # (N + 1,) training interactions per item index; [0] = padding = 0
    item_users: np.ndarray  # (N + 1,) training users who had each item
    num_users: int
    profiles: sp.csr_matrix  # (N + 1, users) L2-normalised binary item-user incidence

    @property
    def num_items(self) -> int:
        return len(self.counts) - 1

    @classmethod
    def from_sequences(cls, train_sequences: list[np.ndarray], num_items: int) -> ItemStatistics:
        rows, cols = [], []
        flat = np.concatenate(train_sequences) if train_sequences else np.zeros(0, dtype=np.int64)
        counts = np.bincount(flat, minlength=num_items + 1).astype(np.int64)
        for user, seq in enumerate(train_sequences):
            unique = np.unique(seq)
            rows.append(unique)
            cols.append(np.full(len(unique), user, dtype=np.int64))
        rows_flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        cols_flat = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        incidence = sp.csr_matrix(
            (np.ones(len(rows_flat), dtype=np.float32), (rows_flat, cols_flat)),
            shape=(num_items + 1, max(len(train_sequences), 1)),
        )
        item_users = np.asarray(incidence.sum(axis=1)).ravel().astype(np.int64)
        norms = np.sqrt(np.maximum(item_users, 1)).astype(np.float32)
        profiles = sp.diags(1.0 / norms) @ incidence  # zero rows stay zero
        return cls(counts, item_users, len(train_sequences), sp.csr_matrix(profiles, dtype=np.float32))

    @classmethod
    def from_data(cls, data) -> ItemStatistics:
        return cls.from_sequences(data.train_sequences(), data.num_items)

    def long_tail(self) -> np.ndarray:
        """(N + 1,) bool: the least popular items holding TAIL_SHARE of the training interactions.

        Items are added from the least popular up (ties by index) while the running total stays
        within the share; padding is never in the tail."""
        order = np.argsort(self.counts[1:], kind="stable") + 1  # least popular first
        within = np.cumsum(self.counts[order]) <= TAIL_SHARE * self.counts.sum()
        tail = np.zeros(self.num_items + 1, dtype=bool)
        tail[order[within]] = True
        return tail

    def similarity_matrix(self) -> np.ndarray:
        """(N + 1, N + 1) dense item-item cosine, for re-rankers that need every candidate pair."""
        return (self.profiles @ self.profiles.T).toarray().astype(np.float32)
