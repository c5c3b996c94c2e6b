"""Privacy-loss distributions (Koskela et al. 2020; Doroshenko et al. 2022) through dp-accounting.

Tighter than RDP for the same releases (the shipped user-level recipe: 7.12 against 8.00), so the
same epsilon buys less noise. dp-accounting's PLD has no fixed-size-without-replacement analysis:
such runs are accounted with RDP. Tree aggregation for one unit in one round of a pass is the
Gaussian mechanism with sensitivity sqrt(depth) (the nodes over its leaf), so it enters as
Gaussian(z / sqrt(depth)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from common.privacy.accountants.base import Accountant
from common.privacy.accountants.events import Gaussian, PoissonGaussian, TreeGaussian
from common.privacy.accountants.rdp import load_dp_accounting
from common.privacy.tree_aggregation import tree_depth

if TYPE_CHECKING:
    import dp_accounting

# The loss grid. dp-accounting rounds pessimistically at each step, so a coarser grid only ever
# overstates epsilon; at 1e-3 the shipped recipe's figure is the same to four digits as at 1e-4,
# at a tenth of the time (0.3 s against 2.6 s for 120 rounds).
DISCRETIZATION = 1e-3


def pld_event(event) -> dp_accounting.DpEvent:
    dp_accounting = load_dp_accounting()
    if isinstance(event, TreeGaussian):
        depth = tree_depth(max(event.tree_lengths))
        return dp_accounting.GaussianDpEvent(event.noise / math.sqrt(depth))
    gaussian = dp_accounting.GaussianDpEvent(event.noise)
    if isinstance(event, PoissonGaussian) and event.rate < 1:
        return dp_accounting.PoissonSampledDpEvent(event.rate, gaussian)
    return gaussian


class PldAccountant(Accountant):
    name = "pld"
    supported = (Gaussian, PoissonGaussian, TreeGaussian)

    def _epsilon(self, delta: float) -> float:
        from dp_accounting import pld

        accountant = pld.PLDAccountant(
            neighboring_relation=load_dp_accounting().NeighboringRelation.ADD_OR_REMOVE_ONE,
            value_discretization_interval=DISCRETIZATION,
        )
        for event, count in self.history:
            accountant.compose(pld_event(event), count=count)
        return accountant.get_epsilon(delta)
