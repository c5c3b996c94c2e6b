"""Server-side DP's releases as accountant events, and their epsilon through `common.privacy.accountants`.

A round of DP-FedAvg adds N(0, (z C)^2) to the sum of the sampled clients' clipped updates, with
z = Flower's noise multiplier (noise std / clipping norm). What the accountant sees depends on how
clients were sampled (`common.privacy.mechanism.server_facts`):
- fixed: m of N without replacement, replace-one adjacency (Wang, Balle & Kasiviswanathan 2019):
  the sum's sensitivity is 2C, so the accountant's multiplier is z / 2;
- poisson (cohort engine): each user with probability q, add/remove: sensitivity C, multiplier z.
Rounds are recorded as [z, m, N] with Flower's z, so what was run and what was accounted can be
read apart. DP-FTRL (tree aggregation, no sampling) is accounted per pass over the users. The unit
of privacy is one client's whole contribution (a user, in cross-device runs).
"""

from __future__ import annotations

from common.privacy.accountants import (
    Event,
    FixedSizeGaussian,
    PoissonGaussian,
    TreeGaussian,
    calibrate,
    create_accountant,
)
from common.privacy.mechanism import SERVER_DPFTRL, accountant_noise_multiplier, server_facts


def round_event(noise_multiplier: float, num_sampled: float, population: int, sampling: str = "fixed") -> Event:
    """One round with multiplier z (noise std / C on the clipped sum), as the accountant must see it.
    fixed: m of N without replacement; poisson: each of N with probability m / N (m expected)."""
    z = accountant_noise_multiplier(noise_multiplier, server_facts(sampling).adjacency)
    if sampling == "poisson":
        return PoissonGaussian(z, min(1.0, num_sampled / population))
    return FixedSizeGaussian(z, min(int(num_sampled), population), population)


def dpfedavg_epsilon_events(
    events: list[tuple[float, float, int]], *, delta: float, sampling: str = "fixed", accountant: str = "rdp"
) -> float:
    """Epsilon after rounds recorded as (noise multiplier, sampled, population)."""
    ledger = create_accountant(accountant)
    for z, m, n in events:
        ledger.step(round_event(z, m, n, sampling))
    return ledger.get_epsilon(delta)


def dpfedavg_epsilon(
    *,
    noise_multiplier: float,
    num_sampled: float,
    population: int,
    rounds: int,
    delta: float,
    sampling: str = "fixed",
    accountant: str = "rdp",
) -> float:
    ledger = create_accountant(accountant)
    ledger.step(round_event(noise_multiplier, num_sampled, population, sampling), rounds)
    return ledger.get_epsilon(delta)


def dpfedavg_noise_for(
    target_epsilon: float,
    *,
    num_sampled: float,
    population: int,
    rounds: int,
    delta: float,
    sampling: str = "fixed",
    accountant: str = "rdp",
    spent: list[tuple[float, float, int]] = (),
) -> float:
    """Smallest noise multiplier (to 0.1%) whose epsilon, after the `spent` rounds and `rounds` more, is
    <= target."""

    def releases(z):
        return [(round_event(*e, sampling), 1) for e in spent] + [
            (round_event(z, num_sampled, population, sampling), rounds)
        ]

    return calibrate(lambda: create_accountant(accountant), releases, target_epsilon=target_epsilon, delta=delta)


def dpftrl_events(noise_multiplier: float, trees: list[list[int]]) -> list[tuple[Event, int]]:
    """DP-FTRL with tree restarts (Kairouz et al. 2021, appendix D): `trees` holds, for each pass in
    which a user may take part once, the lengths (rounds) of the trees that pass was cut into (more
    than one when a resumed run restarted a tree). Noise std per node = z C; sensitivity C per node."""
    z = accountant_noise_multiplier(noise_multiplier, SERVER_DPFTRL.adjacency)
    passes = [tuple(int(n) for n in steps if n > 0) for steps in trees]
    return [(TreeGaussian(z, steps), 1) for steps in passes if steps]


def dpftrl_epsilon(noise_multiplier: float, trees: list[list[int]], *, delta: float, accountant: str = "rdp") -> float:
    ledger = create_accountant(accountant, dpftrl_events(noise_multiplier, trees))
    return ledger.get_epsilon(delta)


def dpftrl_noise_for(
    target_epsilon: float, *, rounds_in_tree: int, trees: int, delta: float, accountant: str = "rdp"
) -> float:
    """Smallest noise multiplier (to 0.1%) whose DP-FTRL epsilon over `trees` full trees is <= target."""
    return calibrate(
        lambda: create_accountant(accountant),
        lambda z: dpftrl_events(z, [[rounds_in_tree]] * trees),
        target_epsilon=target_epsilon,
        delta=delta,
    )
