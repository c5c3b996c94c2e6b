"""The noise the server adds to the cohort engine's clipped sums: DP-FedAvg, DP-FTRL, adaptive C.

Each round the server holds x_t, the sum of this round's users' updates, each clipped to C on its
device, and releases x_t + noise_t (then divided by the expected cohort size):
- DP-FedAvg: noise_t ~ N(0, (z C)^2) fresh every round.
- DP-FTRL: noise_t = N_t - N_{t-1}, where N_t is tree aggregation's noise on the prefix sum of
  the current tree (`common.privacy.tree_aggregation`). The model after round t is then the
  start of the tree plus the noisy *prefix* sum (FTRL), so the noise a model carries grows with
  log(rounds), not with sqrt(rounds); any server optimiser on top is post-processing.
Adaptive clipping (Andrew et al. 2021) learns C from the noisy count of users whose update was not
clipped; the count's noise and the update's noise share one accounted multiplier z:
1/z^2 = 1/z_update^2 + 1/(2 sigma_count)^2 (the count query has sensitivity 1/2 as sum(b - 1/2)).
"""

from __future__ import annotations

import math

import numpy as np

from common.privacy.tree_aggregation import TreeNoise


def update_noise_multiplier(z: float, count_stddev: float) -> float:
    """The update's share of an accounted multiplier z when the clip count is noised with count_stddev."""
    if count_stddev <= 0:
        return z
    if 2 * count_stddev <= z:
        raise ValueError(
            f"clip-count-stddev {count_stddev:g} is too small for noise multiplier {z:.3f}: adaptive "
            f"clipping needs 2 x clip-count-stddev > z; raise clip-count-stddev"
        )
    return (z**-2 - (2 * count_stddev) ** -2) ** -0.5


class AdaptiveClip:
    """C <- C exp(-lr (unclipped share - quantile)), the share estimated from a noisy count."""

    def __init__(self, clip: float, quantile: float, lr: float, count_stddev: float):
        self.clip, self.quantile, self.lr, self.count_stddev = clip, quantile, lr, count_stddev

    def step(self, unclipped: int, users: int, expected_users: float, rng: np.random.Generator) -> float:
        noisy = (unclipped - users / 2) + rng.normal(0.0, self.count_stddev)  # sum of (b - 1/2): sensitivity 1/2
        share = noisy / expected_users + 0.5
        self.clip *= math.exp(-self.lr * (share - self.quantile))
        return share


class GaussianRoundNoise:
    """DP-FedAvg: fresh N(0, std^2) on every round's sum."""

    def noise(self, shapes: list[tuple], std: float, rng: np.random.Generator, **_) -> list[np.ndarray]:
        return [rng.normal(0.0, std, shape) for shape in shapes]


class TreeRoundNoise:
    """DP-FTRL: the increment of the tree's prefix noise. `trees` books, per pass over the users, the
    lengths of the trees it was cut into (a new tree starts with each pass and after a resume)."""

    def __init__(self, trees: list[list[int]] | None = None):
        self.trees: list[list[int]] = [list(t) for t in (trees or [])]
        self.pass_index: int | None = None  # the pass of the live tree (None: no live tree; after a resume)
        self.tree: TreeNoise | None = None
        self.position = 0  # rounds of the live tree released so far
        self.last_prefix: list[np.ndarray] | None = None

    def noise(
        self, shapes: list[tuple], std: float, rng: np.random.Generator, *, pass_index: int, **_
    ) -> list[np.ndarray]:
        if self.tree is None or pass_index != self.pass_index:
            self.tree, self.pass_index, self.position = TreeNoise(shapes, std, rng), pass_index, 0
            self.last_prefix = [np.zeros(shape) for shape in shapes]
        self.tree.rng = rng  # each round's new node draws come from this round's generator
        prefix = self.tree.prefix(self.position + 1)
        increment = [now - before for now, before in zip(prefix, self.last_prefix)]
        self._pending = prefix
        return increment

    def book(self) -> None:
        """The round was released: its leaf is part of the tree for good."""
        new_tree = self.position == 0
        self.position += 1
        self.last_prefix = self._pending
        while len(self.trees) <= self.pass_index:
            self.trees.append([])
        if new_tree:
            self.trees[self.pass_index].append(1)
        else:
            self.trees[self.pass_index][-1] += 1
