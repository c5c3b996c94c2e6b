"""What a user-level DP recipe costs before it runs: the noise a population needs (`fedseqrec plan-privacy`).

User-level DP-FedAvg with Poisson sampling adds N(0, (z C)^2) to the sum of a round's clipped user
updates and divides by the expected cohort B. What reaches the model is the noise on the AVERAGE,
z C / B: that, not z, decides whether the private model learns. For a fixed epsilon, z grows with
the sampling rate q = B / N and with the rounds T, so the same cohort is nearly free of noise in a
large population and drowned in a small one. This module answers, for (N, B, T, epsilon, delta):
z, the noise on the average in units of C, and the participations a user gets (T q).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from common.privacy.server_accounting import dpfedavg_epsilon, dpfedavg_noise_for


@dataclass(frozen=True)
class PrivacyPlan:
    population: int
    cohort: float  # expected users per round (Poisson: q = cohort / population)
    rounds: int
    epsilon: float  # the target
    delta: float
    accountant: str
    noise_multiplier: float  # z: noise std on the round's sum / C
    epsilon_spent: float  # what the accountant books for z over the rounds (<= epsilon)

    @property
    def sampling_rate(self) -> float:
        return min(1.0, self.cohort / self.population)

    @property
    def noise_on_average(self) -> float:
        """Noise std per coordinate of the round's average update, in units of the clip C."""
        return self.noise_multiplier / self.cohort

    @property
    def participations(self) -> float:
        """Rounds an average user takes part in."""
        return self.rounds * self.sampling_rate

    def as_dict(self) -> dict:
        return asdict(self) | {
            "sampling_rate": self.sampling_rate,
            "noise_on_average": self.noise_on_average,
            "participations": self.participations,
        }


def plan_privacy(
    *, population: int, cohort: float, rounds: int, epsilon: float, delta: float = 0.0, accountant: str = "rdp"
) -> PrivacyPlan:
    """The smallest z (to 0.1%) that keeps `rounds` Poisson rounds of `cohort` expected users out of
    `population` within (epsilon, delta); delta 0 -> 1 / population."""
    if population < 1 or not 0 < cohort <= population:
        raise ValueError(f"need 0 < cohort <= population, got cohort {cohort} of {population}")
    if rounds < 1 or not epsilon > 0:
        raise ValueError(f"need rounds >= 1 and epsilon > 0, got {rounds} rounds and epsilon {epsilon}")
    delta = delta or 1.0 / population
    shape = dict(num_sampled=cohort, population=population, rounds=rounds, delta=delta, sampling="poisson")
    z = dpfedavg_noise_for(epsilon, accountant=accountant, **shape)
    spent = dpfedavg_epsilon(noise_multiplier=z, accountant=accountant, **shape)
    return PrivacyPlan(population, cohort, rounds, epsilon, delta, accountant, z, spent)
