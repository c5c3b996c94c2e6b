"""Accounting for server-side DP-FedAvg (McMahan et al. 2018) as Flower really samples.

Flower picks a fixed number m of the N clients each round, uniformly without replacement; that
is not Poisson sampling. We account for exactly that with Google's dp-accounting RDP accountant:
`SampledWithoutReplacementDpEvent(N, m, Gaussian(z'))` per round under the replace-one relation
that this sampling scheme's analysis uses (Wang, Balle & Kasiviswanathan 2019), where z' is the
noise relative to the sum's sensitivity under that relation (`common.privacy.mechanism`: z / 2).
Events are recorded as [z, m, N] with Flower's z (noise std / clipping norm), so what was run
and what was accounted can be read apart. The unit of privacy is one client's whole
contribution (a user, in cross-device runs).
"""

from __future__ import annotations

from collections import Counter

import dp_accounting
from absl import logging as absl_logging
from dp_accounting import rdp

# The RDP accountant warns for each low order whose series does not converge at large sampling
# rates and drops that order; the epsilon from the other orders is still a valid upper bound.
absl_logging.set_verbosity(absl_logging.ERROR)

from common.privacy.mechanism import (  # noqa: E402 - after the absl set-up above, as before
    ADD_OR_REMOVE_ONE,
    REPLACE_ONE,
    REPLACE_WITH_ZERO,
    SERVER_DPFTRL,
    accountant_noise_multiplier,
    server_facts,
)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
RELATIONS = {
    REPLACE_ONE: dp_accounting.NeighboringRelation.REPLACE_ONE,
    ADD_OR_REMOVE_ONE: dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    REPLACE_WITH_ZERO: dp_accounting.NeighboringRelation.REPLACE_SPECIAL,
}


def round_event(
    noise_multiplier: float, num_sampled: float, population: int, sampling: str = "fixed"
) -> dp_accounting.DpEvent:
    """One round with multiplier z (noise std / C on the clipped sum), as the accountant must see it.
    fixed: m of N without replacement; poisson: each of N with probability m / N (m expected)."""
    facts = server_facts(sampling)
    gaussian = dp_accounting.GaussianDpEvent(accountant_noise_multiplier(noise_multiplier, facts.adjacency))
    if num_sampled >= population:
        return gaussian  # everyone takes part: no amplification by sampling
    if sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(num_sampled / population, gaussian)
    return dp_accounting.SampledWithoutReplacementDpEvent(population, int(num_sampled), gaussian)


def grouped_rounds(events: list[tuple[float, float, int]]) -> Counter:
    """Equal rounds (noise, sampled, population) with their count."""
    return Counter((float(z), float(m), int(n)) for z, m, n in events)


def dpfedavg_epsilon(
    *, noise_multiplier: float, num_sampled: float, population: int, rounds: int, delta: float, sampling: str = "fixed"
) -> float:
    return dpfedavg_epsilon_events(
        [(noise_multiplier, num_sampled, population)] * rounds, delta=delta, sampling=sampling
    )


def dpfedavg_epsilon_events(events: list[tuple[float, float, int]], *, delta: float, sampling: str = "fixed") -> float:
    """Epsilon after rounds with possibly different (noise multiplier, sampled, population)."""
    if not events:
        return 0.0
    accountant = rdp.RdpAccountant(ORDERS, neighboring_relation=RELATIONS[server_facts(sampling).adjacency])
    # RDP composes additively, so equal rounds are composed once with a count: the without-
    # replacement RDP costs ~0.2 s per event, and composing round by round every round made a
    # 100-round run spend O(rounds^2) time, longer than training, in accounting.
    for (z, m, n), count in grouped_rounds(events).items():
        if z <= 0:
            return float("inf")  # no noise: no guarantee
        accountant.compose(round_event(z, m, n, sampling), count=count)
    return float(accountant.get_epsilon(delta))


def smallest_noise(epsilon_of, target_epsilon: float) -> float:
    """Smallest noise multiplier z (to 0.1%) with epsilon_of(z) <= target (epsilon falls as z grows)."""
    low, high = 0.05, 1.0
    while epsilon_of(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e5:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if epsilon_of(mid) > target_epsilon else (low, mid)
    return high


def dpfedavg_noise_for(
    target_epsilon: float, *, num_sampled: float, population: int, rounds: int, delta: float, sampling: str = "fixed"
) -> float:
    """Smallest noise multiplier (to 0.1%) whose epsilon after `rounds` rounds is <= target."""
    return smallest_noise(
        lambda z: dpfedavg_epsilon(
            noise_multiplier=z,
            num_sampled=num_sampled,
            population=population,
            rounds=rounds,
            delta=delta,
            sampling=sampling,
        ),
        target_epsilon,
    )


def dpftrl_epsilon(noise_multiplier: float, trees: list[list[int]], *, delta: float) -> float:
    """DP-FTRL with tree restarts (Kairouz et al. 2021, appendix D): `trees` holds, for each pass in
    which a user may take part once, the lengths (rounds) of the trees that pass was cut into (more
    than one when a resumed run restarted a tree). Noise std per node = z C; sensitivity C per node."""
    trees = [[int(n) for n in steps if n > 0] for steps in trees]
    trees = [steps for steps in trees if steps]
    if not trees:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = rdp.RdpAccountant(ORDERS, neighboring_relation=RELATIONS[SERVER_DPFTRL.adjacency])
    z = accountant_noise_multiplier(noise_multiplier, SERVER_DPFTRL.adjacency)
    for steps, count in Counter(tuple(steps) for steps in trees).items():
        accountant.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(z, list(steps)), count=count)
    return float(accountant.get_epsilon(delta))


def dpftrl_noise_for(target_epsilon: float, *, rounds_in_tree: int, trees: int, delta: float) -> float:
    """Smallest noise multiplier (to 0.1%) whose DP-FTRL epsilon over `trees` full trees is <= target."""
    return smallest_noise(lambda z: dpftrl_epsilon(z, [[rounds_in_tree]] * trees, delta=delta), target_epsilon)
