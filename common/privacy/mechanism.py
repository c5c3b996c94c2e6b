"""What a DP mechanism's epsilon is about: adjacency, sampling, sensitivity, unit of privacy.

The one place that decides these facts; the run's accounting, the calibration to a target
epsilon and the reports all read them from here, so they cannot disagree.

Server-side DP-FedAvg (Flower's wrappers): each sampled client's update is clipped to C, the
server adds N(0, (z C)^2) to the clipped sum (z C / m on the average of m). Flower samples a
fixed number m of the N clients without replacement, and the analysis of that sampling
(Wang, Balle & Kasiviswanathan 2019) is under replace-one adjacency: one client's update is
replaced by another's, which moves the clipped sum by up to 2C. An accountant that takes the
noise relative to the L2 sensitivity therefore gets z C / 2C = z / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REPLACE_ONE = "replace-one"
ADD_OR_REMOVE_ONE = "add/remove"
# One user's data replaced by nothing (a zero update) in the slots it had: the relation of tree
# aggregation's analysis (Kairouz et al. 2021), where the schedule of the others does not move.
REPLACE_WITH_ZERO = "replace-with-zero"


def sum_sensitivity(adjacency: str, clip: float) -> float:
    """L2 sensitivity of a sum of updates each clipped to `clip`, under `adjacency`."""
    if adjacency == REPLACE_ONE:
        return 2.0 * clip  # one clipped update swapped for another: from +C to -C
    if adjacency in (ADD_OR_REMOVE_ONE, REPLACE_WITH_ZERO):
        return clip  # one clipped update more or less
    raise ValueError(f"unknown adjacency {adjacency!r}; use {REPLACE_ONE!r} or {ADD_OR_REMOVE_ONE!r}")


def accountant_noise_multiplier(noise_multiplier: float, adjacency: str) -> float:
    """Noise std / sensitivity, for a mechanism whose noise std is `noise_multiplier` x clip."""
    return noise_multiplier / sum_sensitivity(adjacency, 1.0)


@dataclass(frozen=True)
class MechanismFacts:
    """What every epsilon of a run is about; written into privacy.json and privacy.md."""

    unit: str  # "client", "user" or "event"
    adjacency: str
    sampling: str
    sensitivity: str

    def as_dict(self) -> dict:
        return asdict(self)


# Server-side DP-FedAvg as Flower runs it (fixed-size sampling, noise z * C on the clipped sum).
SERVER_DPFEDAVG = MechanismFacts(
    unit="client",
    adjacency=REPLACE_ONE,
    sampling="fixed-size: m of N clients per round, uniformly without replacement (secret draw)",
    sensitivity="2C on the clipped sum (one client's update clipped to C replaced by another's); "
    "the accountant's noise multiplier is z / 2",
)


# DP-FedAvg on the cohort engine with Poisson sampling of users (McMahan et al. 2018): each user clips
# its own update to C, the cohort's clipped sum gets N(0, (z C)^2) and is divided by the expected
# cohort size q N. Add/remove one user moves the sum by at most C: the accountant's multiplier is z.
SERVER_DPFEDAVG_POISSON = MechanismFacts(
    unit="client",
    adjacency=ADD_OR_REMOVE_ONE,
    sampling="Poisson: each user with probability q per round, independently (secret draw)",
    sensitivity="C on the clipped sum (one user's update clipped to C added or removed); the accountant's "
    "noise multiplier is z",
)


# DP-FTRL on the cohort engine: no sampling; tree aggregation of the clipped sums
# (`common.privacy.tree_aggregation`), each user in one round per tree and in at most `cap` trees.
SERVER_DPFTRL = MechanismFacts(
    unit="client",
    adjacency=REPLACE_WITH_ZERO,
    sampling="none: each user in its own round of each tree (a public hash of user and tree), at most once per "
    "tree and in at most max-participations trees, enforced by the device",
    sensitivity="C per tree node (one user's update clipped to C enters one leaf per tree, so at most "
    "ceil(log2(rounds per tree + 1)) nodes); the accountant's noise multiplier is z per node",
)


def server_facts(sampling: str, mechanism: str = "dp-fedavg") -> MechanismFacts:
    """Server-side DP's facts: DP-FedAvg with `user-sampling` fixed (Flower's wrapper or the cohort
    engine) or poisson (the cohort engine), or DP-FTRL (the cohort engine)."""
    if mechanism == "dp-ftrl":
        return SERVER_DPFTRL
    return SERVER_DPFEDAVG_POISSON if sampling == "poisson" else SERVER_DPFEDAVG


def dpsgd_unit(owners_are_unique: bool) -> str:
    """Client-side DP-SGD's unit: one DP sample per user protects the user, else one event."""
    return "user" if owners_are_unique else "event"


def client_dpsgd_facts(unit: str) -> MechanismFacts:
    """Opacus DP-SGD on a client: Poisson sampling of its training windows, add/remove one window."""
    return MechanismFacts(
        unit=unit,
        adjacency=ADD_OR_REMOVE_ONE,
        sampling="Poisson: each training window of the client with probability q per step (secret draw)",
        sensitivity="C = max-grad-norm per sample (per-sample gradients clipped to C, add/remove one sample)",
    )
