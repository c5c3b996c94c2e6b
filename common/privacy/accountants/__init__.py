"""Every epsilon in fedseqrec comes through one interface (`Accountant`), picked here by name.

- "rdp": Rényi DP through dp-accounting (every event kind; the default).
- "pld": privacy-loss distributions through dp-accounting (tighter; Poisson, Gaussian, trees).
- "opacus-rdp", "opacus-prv": Opacus' accountants, for client DP-SGD ledgers.
- "independent-rdp": a closed-form numpy RDP bound written apart from the others, the audit's
  cross-check of whatever a run used.
"""

from __future__ import annotations

from common.privacy.accountants.base import Accountant, calibrate, smallest_noise
from common.privacy.accountants.events import (
    Event,
    FixedSizeGaussian,
    Gaussian,
    PoissonGaussian,
    TreeGaussian,
    event_from_dict,
    event_to_dict,
)
from common.privacy.accountants.independent import IndependentRdpAccountant
from common.privacy.accountants.opacus import OpacusPrvAccountant, OpacusRdpAccountant
from common.privacy.accountants.pld import PldAccountant
from common.privacy.accountants.rdp import RdpAccountant

ACCOUNTANTS: dict[str, type[Accountant]] = {
    cls.name: cls
    for cls in (RdpAccountant, PldAccountant, OpacusRdpAccountant, OpacusPrvAccountant, IndependentRdpAccountant)
}


def create_accountant(name: str, history=()) -> Accountant:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name](history)


def accountant_from_state(state: dict) -> Accountant:
    accountant = create_accountant(state["accountant"])
    accountant.load_state_dict(state)
    return accountant


__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "Event",
    "FixedSizeGaussian",
    "Gaussian",
    "PoissonGaussian",
    "TreeGaussian",
    "accountant_from_state",
    "calibrate",
    "create_accountant",
    "event_from_dict",
    "event_to_dict",
    "smallest_noise",
]
