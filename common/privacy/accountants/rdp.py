"""Rényi DP (Mironov 2017) through Google's dp-accounting: every event kind, each under its adjacency.

Fixed-size sampling without replacement uses Wang, Balle & Kasiviswanathan (2019) under replace-one;
Poisson sampling the subsampled-Gaussian RDP under add/remove; tree aggregation Kairouz et al.
(2021, appendix D). RDP composes additively, so equal events are composed once with their count
(the without-replacement RDP costs ~0.2 s per event).
"""

from __future__ import annotations

import dp_accounting
from absl import logging as absl_logging
from dp_accounting import rdp

from common.privacy.accountants.base import Accountant
from common.privacy.accountants.events import FixedSizeGaussian, Gaussian, PoissonGaussian, TreeGaussian
from common.privacy.mechanism import ADD_OR_REMOVE_ONE, REPLACE_ONE, REPLACE_WITH_ZERO

# The RDP accountant warns for each low order whose series does not converge at large sampling
# rates and drops that order; the epsilon from the other orders is still a valid upper bound.
absl_logging.set_verbosity(absl_logging.ERROR)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
RELATIONS = {
    REPLACE_ONE: dp_accounting.NeighboringRelation.REPLACE_ONE,
    ADD_OR_REMOVE_ONE: dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    REPLACE_WITH_ZERO: dp_accounting.NeighboringRelation.REPLACE_SPECIAL,
}


def dp_event(event) -> dp_accounting.DpEvent:
    """The dp-accounting event of one of ours."""
    gaussian = dp_accounting.GaussianDpEvent(event.noise)
    if isinstance(event, Gaussian):
        return gaussian
    if isinstance(event, PoissonGaussian):
        return gaussian if event.rate >= 1 else dp_accounting.PoissonSampledDpEvent(event.rate, gaussian)
    if isinstance(event, FixedSizeGaussian):
        if event.sampled >= event.population:
            return gaussian  # everyone takes part: no amplification by sampling
        return dp_accounting.SampledWithoutReplacementDpEvent(event.population, event.sampled, gaussian)
    return dp_accounting.SingleEpochTreeAggregationDpEvent(event.noise, list(event.tree_lengths))


class RdpAccountant(Accountant):
    name = "rdp"
    supported = (Gaussian, PoissonGaussian, FixedSizeGaussian, TreeGaussian)

    def __init__(self, history=(), orders: list[float] | None = None):
        self.orders = orders or ORDERS
        super().__init__(history)

    def projected(self, event, count: int = 1):
        copy = RdpAccountant(self.history, self.orders)
        copy.step(event, count)
        return copy

    def _epsilon(self, delta: float) -> float:
        relation = RELATIONS[self.history[0][0].adjacency]
        accountant = rdp.RdpAccountant(self.orders, neighboring_relation=relation)
        for event, count in self.history:
            accountant.compose(dp_event(event), count=count)
        return accountant.get_epsilon(delta)
