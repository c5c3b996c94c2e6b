"""Split users over federated clients: one user per client, or K silos (IID or Dirichlet non-IID).

A partition is a list of user indices (rows of `SequenceData`). Holdout users (non-members for
privacy audits) are removed first and never belong to any client; then the public cohort (users
who consented to share their histories: the server validates, and may pretrain, on them; never in
a DP population, never in test). Everything is a pure function
of (data, settings, seed), memoised per process, so thousands of simulated client calls share
one split instead of re-splitting the dataset each call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from common.config import DataSettings, FederationSettings
from common.data.canaries import CanarySet, make_canaries
from common.data.load import append_users, cached_sequence_data
from common.data.sequences import SequenceData


@dataclass(frozen=True)
class Partitioning:
    clients: tuple[np.ndarray, ...]  # user indices of each client
    holdout: np.ndarray  # users kept out of training (audit non-members)
    public: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # the public cohort
    canary_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows of included canaries

    @property
    def num_clients(self) -> int:
        return len(self.clients)


def user_labels(data: SequenceData, num_labels: int = 10) -> np.ndarray:
    """A coarse taste label per user for non-IID splits: the popularity decile of the user's
    median training item (dataset-agnostic: needs no genre metadata)."""
    counts = data.item_counts()
    order = np.argsort(-counts[1:], kind="stable") + 1  # items by popularity
    decile = np.empty(data.num_items + 1, dtype=np.int64)
    decile[order] = np.arange(data.num_items) * num_labels // max(data.num_items, 1)
    decile[0] = 0
    return np.array([int(np.median(decile[s])) if len(s) else 0 for s in data.train_sequences()])


def dirichlet_split(
    labels: np.ndarray, users: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each label's users spread over clients by proportions ~ Dirichlet(alpha) (Hsu et al. 2019);
    every client is guaranteed at least one user."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels[users]):
        members = rng.permutation(users[labels[users] == label])
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    for client in range(num_clients):  # steal one user from the largest client for any empty one
        if not parts[client]:
            donor = max(range(num_clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_users(data: SequenceData, fed: FederationSettings, seed: int) -> Partitioning:
    rng = np.random.default_rng(seed)
    users = rng.permutation(data.num_users)
    num_holdout = int(round(fed.holdout_fraction * data.num_users))
    num_public = int(round(fed.public_fraction * data.num_users))
    holdout, public = np.sort(users[:num_holdout]), np.sort(users[num_holdout : num_holdout + num_public])
    members = np.sort(users[num_holdout + num_public :])
    if fed.partition == "user":
        clients = [np.array([u]) for u in members]
    else:
        if fed.num_partitions > len(members):
            raise ValueError(f"num-partitions {fed.num_partitions} exceeds the {len(members)} training users")
        if fed.partition == "iid":
            clients = [np.sort(c) for c in np.array_split(rng.permutation(members), fed.num_partitions)]
        else:
            clients = dirichlet_split(user_labels(data), members, fed.num_partitions, fed.dirichlet_alpha, rng)
    included = np.flatnonzero(run_canaries(data.num_items, fed, seed).included)
    canary_users = data.num_users + np.arange(len(included), dtype=np.int64)
    if fed.partition == "user":
        clients += [np.array([u]) for u in canary_users]
    else:
        for j, u in enumerate(canary_users):
            clients[j % len(clients)] = np.append(clients[j % len(clients)], u)
    return Partitioning(tuple(clients), holdout, public, canary_users)


def run_canaries(num_items: int, fed: FederationSettings, seed: int) -> CanarySet:
    """The run's canaries (all m of them, with which were included), regenerable from the seed."""
    return make_canaries(num_items, fed.canaries, fed.canary_length, seed)


@lru_cache(maxsize=4)
def cached_partitioning(data_settings: DataSettings, fed: FederationSettings, seed: int) -> Partitioning:
    return partition_users(cached_sequence_data(data_settings), fed, seed)


@lru_cache(maxsize=4)
def cached_population(data_settings: DataSettings, fed: FederationSettings, seed: int) -> SequenceData:
    """The training population: the dataset plus included canaries (the dataset itself without)."""
    data = cached_sequence_data(data_settings)
    canaries = run_canaries(data.num_items, fed, seed)
    if not canaries.included.any():
        return data
    sequences = canaries.sequences[canaries.included]
    return append_users(data, sequences, -1 - np.flatnonzero(canaries.included))  # canary j has user ID -1 - j
