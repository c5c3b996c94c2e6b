"""Privacy on the server: the DP-FedAvg wrapper, the per-round epsilon, and the budget stop.

Server mode (DP-FedAvg, `common.privacy.mechanism.server_facts`): Flower's DP strategy wrapper
clips each client's update to `clipping-norm` and adds N(0, (z * C / m)^2) to the average of m
sampled updates; epsilon is accounted per round for the noise that was really added relative to
the updates that really arrived (fewer replies -> a smaller effective multiplier z * m' / m).
On the cohort engine each user clips its own update on its device, and `private_sum` adds
N(0, (z C)^2) to the cohort's clipped sum and divides by the expected cohort size: the noise is
relative to the sum whatever arrives, and users may be Poisson-sampled (add/remove, multiplier z).
The budget is checked twice: before a round (as if every sampled client replies) and, binding,
after the replies arrive and before aggregation, so a round that would pass `max-epsilon` is
never aggregated nor released. Client mode: each client accounts for itself (Opacus ledger);
the server collects their reported epsilons, units of privacy and noise sources.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, Strategy)

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from common.config import RunConfig
from common.federated import client_seed
from common.privacy import randomness
from common.privacy.server_accounting import dpfedavg_epsilon_events, dpfedavg_noise_for


class PrivacyTracker:
    def __init__(self, config: RunConfig, population: int, delta: float, state: dict | None = None):
        self.config, self.population, self.delta = config, population, delta
        self.mode = config.privacy.dp_mode
        self.cohort = config.federation.cohort_engine  # noise on the users' clipped sum, added here
        self.sampling = config.federation.user_sampling if self.cohort else "fixed"
        self.sampled = min(config.federation.clients_per_round, population)  # expected, under Poisson
        state = state or {}
        self.epsilon_by_round: dict[int, float] = {int(k): v for k, v in state.get("epsilon_by_round", {}).items()}
        self.events: list[list[float]] = state.get("events", [])  # server mode: [z_effective, m, N] per round
        self.client_epsilon: dict[int, float] = {int(k): v for k, v in state.get("client_epsilon", {}).items()}
        # client mode: what each client reported it did (unit of privacy; where its noise came from)
        self.client_unit: dict[int, str] = {int(k): v for k, v in state.get("client_unit", {}).items()}
        self.client_noise: dict[int, str] = {int(k): v for k, v in state.get("client_noise", {}).items()}
        self.declined: int = state.get("declined", 0)
        self.noise_multiplier = config.privacy.noise_multiplier
        if self.mode == "server" and config.privacy.target_epsilon > 0:
            self.noise_multiplier = dpfedavg_noise_for(
                config.privacy.target_epsilon, num_sampled=self.sampled, population=population,
                rounds=config.federation.num_server_rounds, delta=delta, sampling=self.sampling)

    def wrap(self, strategy: Strategy) -> Strategy:
        if self.mode != "server" or self.cohort:  # the cohort engine clips on devices, noises in private_sum
            return strategy
        privacy = self.config.privacy
        wrapper = (DifferentialPrivacyServerSideAdaptiveClipping if privacy.adaptive_clipping
                   else DifferentialPrivacyServerSideFixedClipping)
        return wrapper(strategy, noise_multiplier=self.noise_multiplier, clipping_norm=privacy.clipping_norm,
                       num_sampled_clients=self.sampled)

    @property
    def server_noise(self) -> str:
        return randomness.REPRODUCIBLE if self.config.privacy.reproducible_dp_noise else randomness.SECRET

    def _server_epsilon(self, events: list[list[float]]) -> float:
        return dpfedavg_epsilon_events([tuple(e) for e in events], delta=self.delta, sampling=self.sampling)

    def _round_event(self, arrived: int) -> list[float]:
        if self.cohort:  # noise z C on the sum itself: the same multiplier however many arrive
            return [self.noise_multiplier, self.sampled, self.population]
        return [self.noise_multiplier * arrived / self.sampled, self.sampled, self.population]

    def private_sum(self, replies: list[Message], global_arrays: ArrayRecord, server_round: int) -> list[Message]:
        """Cohort engine, server mode: the clipped users' sum + N(0, (z C)^2), over the expected cohort
        size, as one reply for the strategy (its weighted mean is then exactly this)."""
        privacy = self.config.privacy
        rng = (np.random.default_rng([self.config.train.seed, server_round, client_seed(0, server_round, -2)])
               if privacy.reproducible_dp_noise else randomness.secret_rng())
        start = global_arrays.to_numpy_ndarrays()
        names = list(global_arrays.keys())
        total = [np.zeros_like(a, dtype=np.float64) for a in start]
        users, loss = 0, 0.0
        for reply in replies:
            n = int(reply.content["metrics"]["num-examples"])
            users += n
            loss += float(reply.content["metrics"].get("train-loss", 0.0)) * n
            for acc, mean, base in zip(total, reply.content["arrays"].to_numpy_ndarrays(), start):
                acc += (mean.astype(np.float64) - base) * n  # this node's users' clipped sum
        std = self.noise_multiplier * privacy.clipping_norm
        noisy = {name: (base + (acc + rng.normal(0.0, std, acc.shape)) / self.sampled).astype(base.dtype)
                 for name, base, acc in zip(names, start, total)}
        combined = replies[0]
        combined.content = RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v))
                                                              for k, v in noisy.items()}),
                                       "metrics": MetricRecord({"num-examples": 1, "unit-weight": 1,
                                                                "train-loss": loss / max(users, 1)})})
        return [combined]

    def epsilon_after(self, arrived: int) -> float:
        """Server mode: the run's epsilon if a round with `arrived` contributing clients were released."""
        return self._server_epsilon(self.events + [self._round_event(arrived)] if arrived else self.events)

    def _cap(self) -> float:
        return self.config.privacy.max_epsilon if self.mode == "server" else 0.0

    def allows(self, server_round: int) -> bool:
        """False when even a round in which every sampled client replies would pass max-epsilon."""
        return self._cap() <= 0 or self.epsilon_after(self.sampled) <= self._cap()

    def refuses(self, arrived: int) -> str | None:
        """Why a round with `arrived` contributing clients must not be aggregated (None: it may)."""
        cap = self._cap()
        if cap <= 0 or not arrived:
            return None
        epsilon = self.epsilon_after(arrived)
        if epsilon <= cap:
            return None
        return (f"{arrived} of {self.sampled} sampled clients replied; releasing that round would spend "
                f"epsilon {epsilon:.3f} > max-epsilon {cap:g} (delta {self.delta:.2e})")

    def record(self, server_round: int, per_client: dict[int, dict], arrived: int) -> dict:
        """Book a released round: `arrived` clients' updates were aggregated (server mode)."""
        if self.mode == "none":
            return {}
        if self.mode == "server":
            if arrived:
                self.events.append(self._round_event(arrived))
            epsilon = self._server_epsilon(self.events)
        else:
            for key, metrics in per_client.items():
                if "epsilon" in metrics:
                    self.client_epsilon[key] = float(metrics["epsilon"])
                if "user-level" in metrics:
                    self.client_unit[key] = "user" if int(metrics["user-level"]) else "event"
                if "dp-noise-reproducible" in metrics:
                    self.client_noise[key] = (randomness.REPRODUCIBLE if int(metrics["dp-noise-reproducible"])
                                              else randomness.SECRET)
                self.declined += int(metrics.get("declined", 0))
            epsilon = max(self.client_epsilon.values(), default=0.0)
        self.epsilon_by_round[server_round] = epsilon
        return {"epsilon": epsilon}

    def state_dict(self) -> dict:
        return {"epsilon_by_round": {str(k): v for k, v in self.epsilon_by_round.items()}, "events": self.events,
                "client_epsilon": {str(k): v for k, v in self.client_epsilon.items()},
                "client_unit": {str(k): v for k, v in self.client_unit.items()},
                "client_noise": {str(k): v for k, v in self.client_noise.items()}, "declined": self.declined,
                "sampling": self.sampling}
