"""Privacy on the server: the DP-FedAvg wrapper, the per-round epsilon, and the budget stop.

Server mode (user-level DP-FedAvg): Flower's DP strategy wrapper clips each client's update to
`clipping-norm` and adds N(0, (z * C / m)^2) to the average of m sampled updates; epsilon is
accounted per round for the noise that was really added relative to the updates that really
arrived (fewer replies -> a smaller effective noise multiplier z * m' / m). Client mode: each
client accounts for itself (Opacus ledger); the server collects their reported epsilons.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, Strategy)

from common.config import RunConfig
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

    def _server_epsilon(self, events: list[list[float]]) -> float:
        return dpfedavg_epsilon_events([tuple(e) for e in events], delta=self.delta)

    def allows(self, server_round: int) -> bool:
        """False when the next round could take the run past max-epsilon (server mode)."""
        cap = self.config.privacy.max_epsilon
        if self.mode != "server" or cap <= 0:
            return True
        planned = self.events + [[self.noise_multiplier, self.sampled, self.population]]
        return self._server_epsilon(planned) <= cap

    def record(self, server_round: int, per_client: dict[int, dict]) -> dict:
        if self.mode == "none":
            return {}
        if self.mode == "server":
            arrived = sum(1 for m in per_client.values() if not m.get("declined"))
            if arrived:
                z_effective = self.noise_multiplier * arrived / self.sampled
                self.events.append([z_effective, self.sampled, self.population])
            epsilon = self._server_epsilon(self.events)
        else:
            for key, metrics in per_client.items():
                if "epsilon" in metrics:
                    self.client_epsilon[key] = float(metrics["epsilon"])
                self.declined += int(metrics.get("declined", 0))
            epsilon = max(self.client_epsilon.values(), default=0.0)
        self.epsilon_by_round[server_round] = epsilon
        return {"epsilon": epsilon}

    def state_dict(self) -> dict:
        return {"epsilon_by_round": {str(k): v for k, v in self.epsilon_by_round.items()}, "events": self.events,
                "client_epsilon": {str(k): v for k, v in self.client_epsilon.items()}, "declined": self.declined}
