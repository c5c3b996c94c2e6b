"""Fake users of a simulated item-promotion attack (sim-attack = promote).

An attacker who wants item t in everyone's top-10 registers fake users whose histories say
"t follows everything": random catalogue items with t after each one (the data-poisoning
profile of the federated-recommendation attack literature). On per-client simulations a
compromised client trains on as many fake users as it holds; on the cohort engine the attacker
adds `fake_user_count` one-user devices to the population, client keys after the real users',
which the server samples like any other device: it cannot tell them apart.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from common.config import DataSettings, FederationSettings, RunConfig
from common.data.load import append_users
from common.data.sequences import SequenceData
from common.partition import cached_population

FAKE_USER_IDS_FROM = -1_000_000_000  # fake user j has original user ID FAKE_USER_IDS_FROM - j (never a real ID)


def fake_histories(lengths: np.ndarray, num_items: int, target: int, seed: int) -> list[np.ndarray]:
    """One history per length: random items (never the target) with `target` after each."""
    rng = np.random.default_rng([seed, target, 0xFA4E])
    out = []
    for length in lengths:
        others = rng.integers(1, num_items, size=max(2, int(length) // 2))
        others[others >= target] += 1  # uniform over the catalogue without the target
        out.append(np.stack([others, np.full_like(others, target)], 1).ravel().astype(np.int64))
    return out


def fake_users(like: SequenceData, target: int, seed: int) -> SequenceData:
    """As many fake users as `like` has, each as long as its real counterpart (a compromised client)."""
    parts = fake_histories(like.lengths(), like.num_items, target, seed)
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
    histories = fake_histories(lengths, population.num_items, fed.sim_target_item, seed)
    ids = FAKE_USER_IDS_FROM - np.arange(count, dtype=np.int64)
    return append_users(population, np.array(histories, dtype=object), ids), population.num_users


def simulated_devices(config: RunConfig, real: int) -> int:
    """One-user devices the cohort engine simulates: the real ones and the attacker's fake ones."""
    return real + fake_user_count(config.federation, real)
