"""Rényi DP (Mironov 2017) through Google's dp-accounting: every event kind, each under its adjacency.

Fixed-size sampling without replacement uses Wang, Balle & Kasiviswanathan (2019) under replace-one;
Poisson sampling the subsampled-Gaussian RDP under add/remove; tree aggregation Kairouz et al.
(2021, appendix D). RDP composes additively, so equal events are composed once with their count
(the without-replacement RDP costs ~0.2 s per event).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.privacy.accountants.base import Accountant
from common.privacy.accountants.events import FixedSizeGaussian, Gaussian, PoissonGaussian, TreeGaussian
from common.privacy.mechanism import ADD_OR_REMOVE_ONE, REPLACE_ONE, REPLACE_WITH_ZERO

if TYPE_CHECKING:
    import dp_accounting

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]


def load_dp_accounting():
    """dp-accounting, imported where an epsilon is computed: ~1 s (it pulls scipy.signal) that a
    process which never accounts (a run without DP, a ClientApp) does not pay."""
    import dp_accounting
    from absl import logging as absl_logging

    # The RDP accountant warns for each low order whose series does not converge at large sampling
    # rates and drops that order; the epsilon from the other orders is still a valid upper bound.
    absl_logging.set_verbosity(absl_logging.ERROR)
    return dp_accounting


def relation(adjacency: str) -> dp_accounting.NeighboringRelation:
    relations = load_dp_accounting().NeighboringRelation
    return {
        REPLACE_ONE: relations.REPLACE_ONE,
        ADD_OR_REMOVE_ONE: relations.ADD_OR_REMOVE_ONE,
        REPLACE_WITH_ZERO: relations.REPLACE_SPECIAL,
    }[adjacency]


def dp_event(event) -> dp_accounting.DpEvent:
    """The dp-accounting event of one of ours."""
    dp_accounting = load_dp_accounting()
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
        from dp_accounting import rdp

        accountant = rdp.RdpAccountant(self.orders, neighboring_relation=relation(self.history[0][0].adjacency))
        for event, count in self.history:
            accountant.compose(dp_event(event), count=count)
        return accountant.get_epsilon(delta)
