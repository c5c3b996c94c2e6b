"""Opacus' own accountants (RDP, PRV) for client DP-SGD ledgers: the figures Opacus users expect.

A DP-SGD ledger is Poisson-sampled Gaussian steps: (noise multiplier, sample rate) x steps.
"""

from __future__ import annotations

from common.privacy.accountants.base import Accountant
from common.privacy.accountants.events import PoissonGaussian


def _opacus(kind: str):
    from opacus.accountants import create_accountant  # only where epsilon is asked for (startup time)

    from common.logs import drop_opacus_root_handler

    drop_opacus_root_handler(load=False)
    return create_accountant(kind)


class OpacusAccountant(Accountant):
    supported = (PoissonGaussian,)
    mechanism = ""

    def _epsilon(self, delta: float) -> float:
        accountant = _opacus(self.mechanism)
        accountant.history = [(float(e.noise), float(e.rate), int(count)) for e, count in self.history]
        return float(accountant.get_epsilon(delta=delta))


class OpacusRdpAccountant(OpacusAccountant):
    name, mechanism = "opacus-rdp", "rdp"


class OpacusPrvAccountant(OpacusAccountant):
    name, mechanism = "opacus-prv", "prv"
