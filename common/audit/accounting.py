"""Recompute a run's epsilon with a second accountant, from the mechanism history it recorded.

Client mode: each client's Opacus ledger [(z, q, steps)] is replayed with Google's dp-accounting,
as `PoissonSampledDpEvent(q, GaussianDpEvent(z))` self-composed `steps` times: RDP (on Opacus'
orders, to compare like with like) and PLD (the tighter figure). Server mode: the recorded
per-round events [z_effective, m, N] are replayed with dp-accounting RDP as
`SampledWithoutReplacementDpEvent` (replace-one), and with PLD. dp-accounting's PLD accountant
does not support `SampledWithoutReplacementDpEvent`, so the PLD figure for server mode is for
Poisson sampling at q = m / N under replace-one: an approximation, reported as such.

Failures: two RDP implementations disagreeing by more than 1% (relative), the recorded epsilon
disagreeing with the recomputation, or PLD above RDP (impossible for the same mechanism).
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting import pld, rdp
from opacus.accountants import RDPAccountant

from common.privacy.server_accounting import grouped_rounds  # exact: k equal events composed at once

# Opacus' default RDP orders: the same grid on both sides makes the comparison like for like.
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
RDP_TOLERANCE = 0.01  # relative
PLD_DISCRETIZATION = 1e-3  # dp-accounting PLD grid (smaller = tighter, slower)


def _poisson_history_event(history: list[tuple[float, float, int]]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(float(q), dp_accounting.GaussianDpEvent(float(z))), int(steps))
        for z, q, steps in history if steps > 0])


def opacus_rdp_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(z), float(q), int(s)) for z, q, s in history]
    return float(accountant.get_epsilon(delta=delta, alphas=OPACUS_ORDERS))


def poisson_rdp_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    if not history:
        return 0.0
    accountant = rdp.RdpAccountant(OPACUS_ORDERS)
    accountant.compose(_poisson_history_event(history))
    return float(accountant.get_epsilon(delta))


def poisson_pld_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    if not history:
        return 0.0
    accountant = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(_poisson_history_event(history))
    return float(accountant.get_epsilon(delta))


def server_rdp_epsilon(events: list[tuple[float, int, int]], *, delta: float) -> float:
    """dp-accounting RDP, fixed-size sampling without replacement, as the run's tracker does."""
    if not events:
        return 0.0
    partial = any(m < n for _, m, n in events)
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if partial
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant = rdp.RdpAccountant(OPACUS_ORDERS + [128, 256, 512], neighboring_relation=relation)
    for (z, m, n), count in grouped_rounds(events).items():
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(gaussian if m >= n else dp_accounting.SampledWithoutReplacementDpEvent(n, m, gaussian),
                           count=count)
    return float(accountant.get_epsilon(delta))


def server_pld_epsilon(events: list[tuple[float, int, int]], *, delta: float) -> float:
    """PLD with Poisson sampling at q = m / N (PLD has no without-replacement event), under the
    relation the run's accountant uses: replace-one when clients are sampled, else add/remove."""
    if not events:
        return 0.0
    partial = any(m < n for _, m, n in events)
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if partial
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant = pld.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETIZATION)
    for (z, m, n), count in grouped_rounds(events).items():
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(gaussian if m >= n else dp_accounting.PoissonSampledDpEvent(m / n, gaussian), count=count)
    return float(accountant.get_epsilon(delta))


def gaussian_delta(epsilon: float, noise_multiplier: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism, sensitivity 1, std z (Balle & Wang 2018)."""
    z = noise_multiplier
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731 (standard normal CDF)
    return phi(-epsilon * z + 1 / (2 * z)) - math.exp(epsilon) * phi(-epsilon * z - 1 / (2 * z))


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism at delta, by bisection on `gaussian_delta`."""
    low, high = 0.0, 1.0
    while gaussian_delta(high, noise_multiplier) > delta:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if gaussian_delta(mid, noise_multiplier) > delta else (low, mid)
    return high


def _relative_gap(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def audit_client_ledgers(ledgers: dict[str, list], *, delta: float, recorded: float,
                         accountant: str = "rdp") -> dict:
    """Per-client recomputation; the run's epsilon is the worst client's."""
    rows, failures = [], []
    for name, history in sorted(ledgers.items()):
        history = [(float(z), float(q), int(s)) for z, q, s in history]
        row = {"client": name, "history": history,
               "opacus_rdp": opacus_rdp_epsilon(history, delta=delta),
               "dp_accounting_rdp": poisson_rdp_epsilon(history, delta=delta),
               "dp_accounting_pld": poisson_pld_epsilon(history, delta=delta)}
        if _relative_gap(row["opacus_rdp"], row["dp_accounting_rdp"]) > RDP_TOLERANCE:
            failures.append(f"client {name}: Opacus RDP {row['opacus_rdp']:.4f} and dp-accounting RDP "
                            f"{row['dp_accounting_rdp']:.4f} disagree by more than {RDP_TOLERANCE:.0%}")
        if row["dp_accounting_pld"] > row["dp_accounting_rdp"] * (1 + RDP_TOLERANCE):
            failures.append(f"client {name}: PLD epsilon {row['dp_accounting_pld']:.4f} exceeds RDP "
                            f"{row['dp_accounting_rdp']:.4f} (impossible for the same mechanism)")
        rows.append(row)
    worst = {key: max((r[key] for r in rows), default=0.0)
             for key in ("opacus_rdp", "dp_accounting_rdp", "dp_accounting_pld")}
    if accountant == "rdp" and rows and _relative_gap(worst["opacus_rdp"], recorded) > RDP_TOLERANCE:
        failures.append(f"recorded epsilon {recorded:.4f} does not match the worst ledger's Opacus RDP "
                        f"epsilon {worst['opacus_rdp']:.4f}")
    return {"mode": "client", "delta": delta, "recorded_epsilon": recorded, "recorded_accountant": accountant,
            "clients": rows, "epsilon": worst, "failures": failures,
            "method": "dp-accounting PoissonSampled(q, Gaussian(z)) x steps per ledger entry; RDP on Opacus' "
                      "orders, PLD with discretization " + str(PLD_DISCRETIZATION)}


def audit_server_events(events: list, *, delta: float, recorded: float) -> dict:
    events = [(float(z), int(m), int(n)) for z, m, n in events]
    rdp_eps = server_rdp_epsilon(events, delta=delta)
    pld_eps = server_pld_epsilon(events, delta=delta)
    failures = []
    if events and _relative_gap(rdp_eps, recorded) > RDP_TOLERANCE:
        failures.append(f"recorded epsilon {recorded:.4f} does not match the replayed RDP epsilon {rdp_eps:.4f}")
    if pld_eps > rdp_eps * (1 + RDP_TOLERANCE):
        failures.append(f"PLD epsilon {pld_eps:.4f} exceeds RDP {rdp_eps:.4f}")
    return {"mode": "server", "delta": delta, "recorded_epsilon": recorded, "rounds": len(events),
            "epsilon": {"dp_accounting_rdp": rdp_eps, "dp_accounting_pld_poisson_approx": pld_eps},
            "failures": failures,
            "method": "RDP: SampledWithoutReplacement(N, m, Gaussian(z_eff)) per round, replace-one "
                      "(as recorded by the run). PLD: dp-accounting's PLD accountant does not support "
                      "SampledWithoutReplacement, so it uses PoissonSampled(m/N, Gaussian(z_eff)) under "
                      "the same relation: an approximation of the run's sampling, for comparison only."}
