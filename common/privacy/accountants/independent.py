"""An independent closed-form RDP upper bound: the audit's second implementation of the accounting.

Written from the papers with numpy only (no dp-accounting, no Opacus), at integer orders, so that
an error in the run's accountant or in how the run booked its releases shows up as a disagreement:
- Gaussian: RDP(a) = a / (2 s^2).
- Poisson-sampled Gaussian, add/remove: the exact integer-order form (Mironov, Talwar & Zhang 2019,
  sec. 3.3): A_a = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 s^2)), RDP(a) = log(A_a) / (a - 1).
- Fixed-size sampling without replacement, replace-one: Wang, Balle & Kasiviswanathan (2019),
  Theorem 9 (the general bound; e(j) = j / (2 s^2), and min{2, (e^e(inf) - 1)^j} = 2 for a Gaussian).
- Tree aggregation: a unit in one leaf changes every released node over it; node (level l, index i)
  enters a released prefix sum iff i is even (a left block) and it ends within the tree, so the
  Gaussian's sensitivity is sqrt(the largest such count over the leaves).
RDP -> (epsilon, delta): Canonne, Kamath & Steinke (2020), Proposition 12. Orders: a fine grid
below 11 and the integers to 512; at a fractional order the subsampled forms take their value at
the next integer (Rényi divergence does not fall as the order grows, so that is still an upper bound).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

from common.privacy.accountants.base import Accountant
from common.privacy.accountants.events import FixedSizeGaussian, Gaussian, PoissonGaussian, TreeGaussian

ORDERS = np.unique(np.concatenate([np.round(np.arange(1.1, 11.0, 0.1), 1), np.arange(2, 513)]))


def _log_binomial(n: int, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def poisson_rdp(noise: float, rate: float, order: int) -> float:
    if rate >= 1:
        return order / (2 * noise**2)
    k = np.arange(order + 1)
    terms = (
        _log_binomial(order, k) + (order - k) * math.log1p(-rate) + k * math.log(rate) + (k * k - k) / (2 * noise**2)
    )
    return float(logsumexp(terms) / (order - 1))


def fixed_size_rdp(noise: float, rate: float, order: int) -> float:
    if rate >= 1:
        return order / (2 * noise**2)
    eps2 = 2 / (2 * noise**2)
    second = (
        2 * math.log(rate)
        + _log_binomial(order, np.array(2))
        + min(math.log(4) + math.log(math.expm1(eps2)), math.log(2) + eps2)
    )
    j = np.arange(3, order + 1)
    higher = j * math.log(rate) + _log_binomial(order, j) + math.log(2) + (j - 1) * j / (2 * noise**2)
    return float(logsumexp(np.concatenate([[0.0, float(second)], higher])) / (order - 1))


def released_depth(tree_length: int) -> int:
    """The most released tree nodes over one leaf of a tree run `tree_length` rounds."""
    best = 0
    for leaf in range(1, tree_length + 1):
        count, level = 0, 0
        while (1 << level) <= tree_length:
            index = (leaf - 1) >> level
            count += index % 2 == 0 and (index + 1) << level <= tree_length
            level += 1
        best = max(best, count)
    return best


def event_rdp(event, order: float) -> float:
    if isinstance(event, Gaussian):
        return order / (2 * event.noise**2)
    if isinstance(event, PoissonGaussian):
        if event.rate >= 1:  # no sampling: the Gaussian, exact at any order (no rounding up)
            return order / (2 * event.noise**2)
        return poisson_rdp(event.noise, event.rate, max(2, math.ceil(order)))
    if isinstance(event, FixedSizeGaussian):
        return fixed_size_rdp(event.noise, event.rate, max(2, math.ceil(order)))
    return order * max(released_depth(n) for n in event.tree_lengths) / (2 * event.noise**2)


def rdp_to_epsilon(rdp: np.ndarray, orders: np.ndarray, delta: float) -> float:
    """Canonne, Kamath & Steinke (2020), Proposition 12, minimised over the orders."""
    eps = rdp + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)
    return float(max(0.0, np.min(eps)))


class IndependentRdpAccountant(Accountant):
    name = "independent-rdp"
    supported = (Gaussian, PoissonGaussian, FixedSizeGaussian, TreeGaussian)

    def _epsilon(self, delta: float) -> float:
        total = np.zeros(len(ORDERS))
        for event, count in self.history:
            total += count * np.array([event_rdp(event, float(a)) for a in ORDERS])
        return rdp_to_epsilon(total, ORDERS.astype(float), delta)
