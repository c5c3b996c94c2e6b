"""Flower strategies chosen by run config, and their state for checkpoints.

Sampling is done by `server.loop` (by client identity, seeded per round); the strategy receives
exactly the sampled nodes, so it is configured to use all nodes it is given.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from common.config import RunConfig

# Server-optimiser state of FedOpt strategies (FedAdam, FedYogi): current weights and moments.
_STATE_ATTRS = ("current_arrays", "m_t", "v_t")


def build_strategy(config: RunConfig) -> Strategy:
    fed = config.federation
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        # DP-FedAvg's sensitivity bound needs equal weights; every reply carries unit-weight = 1.
        weighted_by_key="unit-weight" if config.privacy.dp_mode != "none" else "num-examples",
    )
    if fed.strategy == "fedavg":
        return FedAvg(**common)
    if fed.strategy == "fedprox":
        return FedProx(**common, proximal_mu=fed.proximal_mu)
    # Byzantine-robust aggregation: unweighted over clients, so that a client cannot buy weight
    # by claiming more examples.
    robust = {**common, "weighted_by_key": "unit-weight"}
    if fed.strategy == "fedmedian":
        return FedMedian(**robust)
    if fed.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**robust, beta=fed.trim_beta)
    if fed.strategy == "krum":
        return Krum(**robust, num_malicious_nodes=fed.assumed_malicious)
    if fed.strategy == "multikrum":
        select = fed.multikrum_select or max(1, fed.clients_per_round - fed.assumed_malicious)
        return MultiKrum(**robust, num_malicious_nodes=fed.assumed_malicious, num_nodes_to_select=select)
    if fed.strategy == "bulyan":
        return Bulyan(**robust, num_malicious_nodes=fed.assumed_malicious)
    optimiser = FedAdam if fed.strategy == "fedadam" else FedYogi
    # eta_l is only reported by Flower; clients use local-lr themselves.
    return optimiser(**common, eta=fed.server_lr, eta_l=fed.local_lr, beta_1=0.9, beta_2=0.99, tau=fed.server_tau)


def _inner(strategy: Strategy) -> Strategy:
    """The aggregation strategy inside DP wrappers."""
    while hasattr(strategy, "strategy"):
        strategy = strategy.strategy
    return strategy


def strategy_state(strategy: Strategy) -> dict[str, dict[str, torch.Tensor] | None]:
    inner = _inner(strategy)
    state = {}
    for attr in _STATE_ATTRS:
        value = getattr(inner, attr, None)
        state[attr] = None if value is None else {k: torch.as_tensor(np.asarray(v)) for k, v in value.items()}
    return state


def load_strategy_state(strategy: Strategy, state: dict) -> None:
    inner = _inner(strategy)
    for attr, value in state.items():
        if hasattr(inner, attr):
            setattr(inner, attr, None if value is None else {k: v.numpy() for k, v in value.items()})
