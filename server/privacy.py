"""Privacy on the server: the DP-FedAvg wrapper, the per-round epsilon, and the budget stop.

Server mode (DP-FedAvg, `common.privacy.mechanism.SERVER_DPFEDAVG`): Flower's DP strategy wrapper
clips each client's update to `clipping-norm` and adds N(0, (z * C / m)^2) to the average of m
sampled updates; epsilon is accounted per round for the noise that was really added relative to
the updates that really arrived (fewer replies -> a smaller effective multiplier z * m' / m).
The budget is checked twice: before a round (as if every sampled client replies) and, binding,
after the replies arrive and before aggregation, so a round that would pass `max-epsilon` is
never aggregated nor released. Client mode: each client accounts for itself (Opacus ledger);
the server collects their reported epsilons, units of privacy and noise sources.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, Strategy)

from common.config import RunConfig
from common.privacy import randomness
from common.privacy.server_accounting import dpfedavg_epsilon_events, dpfedavg_noise_for


class PrivacyTracker:
    def __init__(self, config: RunConfig, population: int, delta: float, state: dict | None = None):
        self.config, self.population, self.delta = config, population, delta
        self.mode = config.privacy.dp_mode
        self.sampled = min(config.federation.clients_per_round, population)
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
                rounds=config.federation.num_server_rounds, delta=delta)

    def wrap(self, strategy: Strategy) -> Strategy:
        if self.mode != "server":
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
        return dpfedavg_epsilon_events([tuple(e) for e in events], delta=self.delta)

    def _round_event(self, arrived: int) -> list[float]:
        return [self.noise_multiplier * arrived / self.sampled, self.sampled, self.population]

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
                "client_noise": {str(k): v for k, v in self.client_noise.items()}, "declined": self.declined}
