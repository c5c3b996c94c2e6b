"""Canary users for a privacy audit: random item sequences added to the training users.

Each canary is included with probability 1/2, both decided by the run seed alone, so the offline
audit (common.audit.canaries) regenerates exactly which were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANARY_STREAM = 0xCA4A  # keeps the canary RNG stream apart from every other use of the run seed


@dataclass(frozen=True)
class CanarySet:
    sequences: np.ndarray  # (m, length) int64 item indices in 1..num_items
    included: np.ndarray  # (m,) bool: trained on (probability 1/2 each)


def make_canaries(num_items: int, count: int, length: int, seed: int) -> CanarySet:
    """Deterministic in (num_items, count, length, seed): random distinct items per canary."""
    rng = np.random.default_rng([seed, CANARY_STREAM])
    sequences = (
        np.stack([rng.choice(num_items, size=length, replace=length > num_items) + 1 for _ in range(count)])
        if count
        else np.zeros((0, length), dtype=np.int64)
    )
    included = rng.random(count) < 0.5
    return CanarySet(sequences.astype(np.int64), included)
