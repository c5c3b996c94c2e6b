"""An accountant-free lower bound on server-side DP-FedAvg's epsilon, from concrete pairs of
neighbouring datasets.

Written apart from the run's accounting on purpose (no RDP, no dp-accounting, its own reading of
the mechanism), so that a wrong method or a wrong sensitivity in the run shows up as a claim
below this bound. The mechanism, read from what Flower does: each round m of N clients are drawn
without replacement (q = m / N), each update is clipped to C, and Gaussian noise of standard
deviation sigma = z C is added to the clipped sum. Replace-one adjacency: D and D' differ in one
client (add/remove, for Poisson-sampled users: one user more or less, whose update is C e, with
every other user sending 0: the pair (1 - q) N(0, s2) + q N(C, s2) against N(0, s2), both ways).
Replace-one pairs, all updates along one direction e and within the clipping ball:
- aligned: every other client sends -C e; the differing one sends +C e in D and -C e in D'.
  Shifted by m C, the round's output along e is (1 - q) N(0, s2) + q N(2C, s2) under D and
  N(0, s2) under D' (s2 = sigma^2), compared in both directions;
- centred: every other client sends 0; the differing one sends +C e or -C e:
  (1 - q) N(0, s2) + q N(C, s2) against (1 - q) N(0, s2) + q N(-C, s2).
The true epsilon is a supremum over all neighbouring pairs, so the exact epsilon of any such
pair, composed over the rounds, can only be lower. It is computed from the privacy-loss
distribution on a grid, rounding every loss down and dropping far tails: each step lowers the
figure, so the bound stays a bound.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

GRID_SPAN = 14.0  # noise standard deviations beyond the shifted means that the output grid covers
OUTPUT_STEP = 2e-4  # grid step of the output, in noise standard deviations
LOSS_STEP = 5e-4  # grid step of the privacy loss (each round rounds down by < LOSS_STEP)
TAIL = 1e-14  # probability mass dropped at each end after each composition


def _log_normal_pdf(y: np.ndarray, mean: float) -> np.ndarray:
    return -0.5 * (y - mean) ** 2 - 0.5 * math.log(2 * math.pi)


# (P's means, Q's means) in units of C / sigma, each a mixture (1 - q) N(first) + q N(second).
PAIRS = {
    "aligned": ((0.0, 2.0), (0.0, 0.0)),
    "aligned-reverse": ((0.0, 0.0), (0.0, 2.0)),
    "centred": ((0.0, 1.0), (0.0, -1.0)),
    # add/remove (Poisson-sampled users): the user is there with its update C e, or absent
    "added": ((0.0, 1.0), (0.0, 0.0)),
    "removed": ((0.0, 0.0), (0.0, 1.0)),
}
PAIRS_BY_ADJACENCY = {"replace-one": ("aligned", "aligned-reverse", "centred"), "add/remove": ("added", "removed")}


def _log_mixture(y: np.ndarray, means: tuple[float, float], q: float) -> np.ndarray:
    log_keep = math.log1p(-q) if q < 1 else -math.inf
    return np.logaddexp(log_keep + _log_normal_pdf(y, means[0]), math.log(q) + _log_normal_pdf(y, means[1]))


def round_loss_pmf(shift: float, q: float, pair: str = "aligned") -> tuple[int, np.ndarray]:
    """(offset, pmf): the privacy loss log(P/Q) of one round, under P, on the grid LOSS_STEP * (offset + i).

    `shift` = C / sigma = 1 / z."""
    p_means, q_means = ([shift * m for m in means] for means in PAIRS[pair])
    reach = shift * 2
    y = np.arange(-reach - GRID_SPAN, reach + GRID_SPAN, OUTPUT_STEP)
    mid = y + OUTPUT_STEP / 2
    log_p, log_q = _log_mixture(mid, p_means, q), _log_mixture(mid, q_means, q)
    mass = np.exp(log_p) * OUTPUT_STEP  # midpoint rule; the cells far out carry ~0 mass
    index = np.floor((log_p - log_q) / LOSS_STEP).astype(np.int64)  # rounded down: a lower bound
    offset = int(index.min())
    pmf = np.bincount(index - offset, weights=mass)
    return offset, pmf / max(1.0, pmf.sum())  # never more than probability one


def _trim(offset: int, pmf: np.ndarray) -> tuple[int, np.ndarray]:
    """Drop at most TAIL of mass at each end (dropping mass only lowers delta)."""
    cdf = np.cumsum(pmf)
    low = int(np.searchsorted(cdf, TAIL))
    high = int(np.searchsorted(cdf, cdf[-1] - TAIL)) + 1
    return offset + low, pmf[low:high].copy()


def _convolve(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    size = len(a[1]) + len(b[1]) - 1
    n = 1 << (size - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(a[1], n) * np.fft.rfft(b[1], n), n)[:size]
    return _trim(a[0] + b[0], np.clip(out, 0.0, None))


def _self_compose(pmf: tuple[int, np.ndarray], times: int) -> tuple[int, np.ndarray]:
    result, power = None, pmf
    while times:
        if times & 1:
            result = power if result is None else _convolve(result, power)
        times >>= 1
        if times:
            power = _convolve(power, power)
    return result


def delta_at(epsilon: float, composed: tuple[int, np.ndarray]) -> float:
    offset, pmf = composed
    loss = LOSS_STEP * (offset + np.arange(len(pmf)))
    above = loss > epsilon
    return float(np.sum(pmf[above] * -np.expm1(epsilon - loss[above])))


def composed_loss(rounds: list[tuple[float, float]], pair: str) -> tuple[int, np.ndarray]:
    """The composed loss pmf of rounds given as (shift C / sigma, sampling probability q)."""
    composed = None
    for (shift, q), count in Counter(rounds).items():
        part = _self_compose(round_loss_pmf(shift, q, pair), count)
        composed = part if composed is None else _convolve(composed, part)
    return composed


def epsilon_lower_bound(
    events: list[tuple[float, float, int]], *, delta: float, adjacency: str = "replace-one"
) -> float:
    """The largest epsilon at `delta` of the concrete pairs, over rounds recorded as (z, m, N):
    noise z C on the clipped sum, m of N sampled (the expected m under Poisson sampling)."""
    if any(float(z) <= 0 for z, _, _ in events):
        return math.inf  # a round without noise
    rounds = [(1.0 / float(z), min(1.0, float(m) / int(n))) for z, m, n in events]
    if not rounds:
        return 0.0
    return max(_pair_epsilon(composed_loss(rounds, pair), delta) for pair in PAIRS_BY_ADJACENCY[adjacency])


def _pair_epsilon(composed: tuple[int, np.ndarray], delta: float) -> float:
    if delta_at(0.0, composed) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while delta_at(high, composed) > delta:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_at(mid, composed) > delta else (low, mid)
    return low
