"""Fake users of a simulated item-promotion attack (sim-attack = promote).

An attacker who wants item t in everyone's top-10 registers fake users whose histories say
"t follows everything": catalogue items with t after each one (the data-poisoning profiles of
the federated-recommendation attack literature). The items are uniformly random (`random`), or
drawn by popularity (`popular`, the bandwagon profile): fake histories that look like real
users' put the target next to the items real users hold, where their recommendations come from.
On per-client simulations a compromised client trains on as many fake users as it holds; on the
cohort engine the attacker adds `fake_user_count` one-user devices to the population, client keys
after the real users', which the server samples like any other device: it cannot tell them apart.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from common.config import DataSettings, FederationSettings
from common.data.load import append_users
from common.data.partition import cached_population
from common.data.sequences import SequenceData
from common.errors import DataError

FAKE_USER_IDS_FROM = -1_000_000_000  # fake user j has original user ID FAKE_USER_IDS_FROM - j (never a real ID)


def fake_histories(
    lengths: np.ndarray, num_items: int, target: int, seed: int, popularity: np.ndarray | None = None
) -> list[np.ndarray]:
    """One history per length: items (never the target) with `target` after each; the items uniformly
    random, or drawn in proportion to `popularity` ((num_items + 1,) counts per item index)."""
    rng = np.random.default_rng([seed, target, 0xFA4E])
    weights = None
    if popularity is not None:
        weights = popularity[1:].astype(np.float64).copy()
        weights[target - 1] = 0.0
        if weights.sum() <= 0:
            raise DataError("sim-fake-profile = popular needs items with interactions besides the target")
        weights /= weights.sum()
    out = []
    for length in lengths:
        size = max(2, int(length) // 2)
        if weights is None:
            others = rng.integers(1, num_items, size=size)
            others[others >= target] += 1  # uniform over the catalogue without the target
        else:
            others = rng.choice(num_items, size=size, p=weights) + 1
        out.append(np.stack([others, np.full_like(others, target)], 1).ravel().astype(np.int64))
    return out


def profile_popularity(fed: FederationSettings, known: SequenceData) -> np.ndarray | None:
    """The item counts a bandwagon attacker draws from (of the data it knows), or None for random items."""
    return known.item_counts(train_only=True) if fed.sim_fake_profile == "popular" else None


def fake_users(like: SequenceData, target: int, seed: int, popularity: np.ndarray | None = None) -> SequenceData:
    """As many fake users as `like` has, each as long as its real counterpart (a compromised client)."""
    parts = fake_histories(like.lengths(), like.num_items, target, seed, popularity)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return SequenceData(np.concatenate(parts), offsets, like.user_ids, like.item_ids, {})


def fake_user_count(fed: FederationSettings, num_users: int) -> int:
    """Fake one-user devices the cohort engine adds: sim-attackers x the real users (at least one)."""
    if not (fed.cohort_engine and fed.sim_attack == "promote"):
        return 0
    return max(1, round(fed.sim_attackers * num_users))


@lru_cache(maxsize=2)
def population_with_fakes(data: DataSettings, fed: FederationSettings, seed: int) -> tuple[SequenceData, int]:
    """(the population with the fake users appended, the number of real users before them).

    Fake users' lengths are drawn from the real users' lengths, so that their size tells nothing."""
    population = cached_population(data, fed, seed)
    count = fake_user_count(fed, population.num_users)
    if count == 0:
        return population, population.num_users
    rng = np.random.default_rng([seed, 0xFA4E])
    lengths = rng.choice(population.lengths(), size=count)
    # A bandwagon attacker knows the items' popularity roughly (charts, public ratings); here, exactly.
    popularity = profile_popularity(fed, population)
    histories = fake_histories(lengths, population.num_items, fed.sim_target_item, seed, popularity)
    ids = FAKE_USER_IDS_FROM - np.arange(count, dtype=np.int64)
    return append_users(population, np.array(histories, dtype=object), ids), population.num_users


def simulated_devices(fed: FederationSettings, real: int) -> int:
    """One-user devices the cohort engine simulates: the real ones and the attacker's fake ones."""
    return real + fake_user_count(fed, real)
