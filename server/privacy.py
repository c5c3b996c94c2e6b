"""Privacy on the server: the DP-FedAvg wrapper, the per-round epsilon, and the budget stop.

Server mode (DP-FedAvg, `common.privacy.mechanism.server_facts`): Flower's DP strategy wrapper
clips each client's update to `clipping-norm` and adds N(0, (z * C / m)^2) to the average of m
sampled updates; epsilon is accounted per round for the noise that was really added relative to
the updates that really arrived (fewer replies -> a smaller effective multiplier z * m' / m).
On the cohort engine each user clips its own update on its device, and `private_sum` adds noise
to the cohort's clipped sum (`server.cohort_noise`: DP-FedAvg's fresh N(0, (z C)^2) per round, or
DP-FTRL's tree-aggregated noise) and divides by the expected cohort size: the noise is relative to
the sum whatever arrives; DP-FedAvg's users may be Poisson-sampled (add/remove, multiplier z);
DP-FTRL samples nobody and is accounted per tree with each user's participations capped.
The budget is checked twice: before a round (as if every sampled client replies) and, binding,
after the replies arrive and before aggregation, so a round that would pass `max-epsilon` is
never aggregated nor released. Client mode: each client accounts for itself (Opacus ledger);
the server collects their reported epsilons, units of privacy and noise sources.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from common.config import RunConfig
from common.privacy import participation, randomness
from common.privacy.server_accounting import (
    dpfedavg_epsilon_events,
    dpfedavg_noise_for,
    dpftrl_epsilon,
    dpftrl_noise_for,
)
from common.training.federated import client_seed
from server.cohort_noise import AdaptiveClip, GaussianRoundNoise, TreeRoundNoise, update_noise_multiplier

# The calibration picks z to 0.1% from above, so a planned run ends a hair under its target; this
# slack only absorbs the accountant's float noise between calibration and booking (never a round).
CAP_SLACK = 1e-9


class PrivacyTracker:
    """The run's privacy state: the noise multiplier, the ledger of released rounds, the budget cap.

    `population` is what a guarantee is set against: the simulated users, the users in the server's
    data, or the declared `population-floor` (delta = 1 / it; under Poisson sampling q = expected
    cohort / it, whoever is connected). Fixed-size rounds are booked with the devices they really
    sampled from (`sampled_from`)."""

    def __init__(self, config: RunConfig, population: int, delta: float, state: dict | None = None):
        self.config, self.population, self.delta = config, population, delta
        self.mode = config.privacy.dp_mode
        self.cohort = config.federation.cohort_engine  # noise on the users' clipped sum, added here
        self.sampling = config.federation.user_sampling if self.cohort else "fixed"
        self.sampled = min(config.federation.clients_per_round, population)  # expected, under Poisson
        self.accountant = config.privacy.accountant if self.mode == "server" else "rdp"
        state = state or {}
        self.epsilon_by_round: dict[int, float] = {int(k): v for k, v in state.get("epsilon_by_round", {}).items()}
        self.events: list[list[float]] = state.get("events", [])  # server mode: [z_effective, m, N] per round
        self.client_epsilon: dict[int, float] = {int(k): v for k, v in state.get("client_epsilon", {}).items()}
        # client mode: what each client reported it did (unit of privacy; where its noise came from)
        self.client_unit: dict[int, str] = {int(k): v for k, v in state.get("client_unit", {}).items()}
        self.client_noise: dict[int, str] = {int(k): v for k, v in state.get("client_noise", {}).items()}
        self.declined: int = state.get("declined", 0)
        privacy, fed = config.privacy, config.federation
        self.mechanism = privacy.server_mechanism if self.cohort else "dp-fedavg"
        self.ftrl = self.mode == "server" and self.mechanism == "dp-ftrl"
        self.rounds_in_tree, self.cap = participation.ftrl_schedule(  # dp-ftrl: trees a user may join
            population, fed.clients_per_round, fed.num_server_rounds, privacy.max_participations
        )
        self._next_round = len(self.epsilon_by_round) + 1
        self._epsilon_memo: dict[tuple, float] = {}
        self.noise_multiplier, self.planned_rounds = self._noise_multiplier(state)
        self.tree = TreeRoundNoise(state.get("trees")) if self.ftrl else None
        self.round_noise = self.tree or GaussianRoundNoise()
        # Adaptive clipping on the cohort engine: the count's noise takes a share of the accounted z.
        self.adaptive = (
            AdaptiveClip(
                state.get("clip", privacy.clipping_norm),
                privacy.clip_quantile,
                privacy.clip_lr,
                privacy.clip_count_stddev or self.sampled / 20,
            )
            if self.cohort and self.mode == "server" and privacy.adaptive_clipping
            else None
        )
        self.update_multiplier = (
            update_noise_multiplier(self.noise_multiplier, self.adaptive.count_stddev)
            if self.adaptive
            else self.noise_multiplier
        )
        self.clip_by_round: dict[int, float] = {int(k): v for k, v in state.get("clip_by_round", {}).items()}

    def _noise_multiplier(self, state: dict) -> tuple[float, int]:
        """(z, the rounds it was planned for). With a target epsilon, z is the smallest that keeps the
        rounds already released plus the rest of the run within it: a resume with more rounds plans
        the remaining rounds with what is left of the budget, never the whole budget again."""
        privacy, rounds = self.config.privacy, self.config.federation.num_server_rounds
        if self.mode != "server" or privacy.target_epsilon <= 0:
            return privacy.noise_multiplier, rounds
        if "noise_multiplier" in state and state.get("planned_rounds") == rounds:
            return float(state["noise_multiplier"]), rounds  # the same plan: the same z, so a resume replays
        if self.ftrl:
            z = dpftrl_noise_for(
                privacy.target_epsilon,
                rounds_in_tree=self.rounds_in_tree,
                trees=self.cap,
                delta=self.delta,
                accountant=self.accountant,
            )
            return z, rounds
        remaining = rounds - len(self.epsilon_by_round)
        if remaining <= 0:
            return float(state.get("noise_multiplier", privacy.noise_multiplier)), rounds
        try:
            z = dpfedavg_noise_for(
                privacy.target_epsilon,
                num_sampled=self.sampled,
                population=self.population,
                rounds=remaining,
                delta=self.delta,
                sampling=self.sampling,
                accountant=self.accountant,
                spent=[tuple(e) for e in self.events],
            )
        except ValueError:  # the budget is spent: the cap stops the run before its next round
            z = float(state.get("noise_multiplier", privacy.noise_multiplier))
        return z, rounds

    def wrap(self, strategy: Strategy) -> Strategy:
        if self.mode != "server" or self.cohort:  # the cohort engine clips on devices, noises in private_sum
            return strategy
        privacy = self.config.privacy
        if privacy.adaptive_clipping:  # the count noise's share of z is taken inside Flower's wrapper
            return DifferentialPrivacyServerSideAdaptiveClipping(
                strategy,
                noise_multiplier=self.noise_multiplier,
                num_sampled_clients=self.sampled,
                initial_clipping_norm=privacy.clipping_norm,
                target_clipped_quantile=privacy.clip_quantile,
                clip_norm_lr=privacy.clip_lr,
                clipped_count_stddev=privacy.clip_count_stddev or None,
            )
        return DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=self.noise_multiplier,
            clipping_norm=privacy.clipping_norm,
            num_sampled_clients=self.sampled,
        )

    @property
    def server_noise(self) -> str:
        return randomness.REPRODUCIBLE if self.config.privacy.reproducible_dp_noise else randomness.SECRET

    @property
    def clip(self) -> float:
        """The clipping norm devices use this round (it moves under adaptive clipping)."""
        return self.adaptive.clip if self.adaptive else self.config.privacy.clipping_norm

    def round_config(self, server_round: int) -> dict:
        """What devices need to know of this round's mechanism (cohort engine, server DP)."""
        if not (self.cohort and self.mode == "server"):
            return {}
        return {"clipping-norm": self.clip, **({"rounds-in-tree": self.rounds_in_tree} if self.ftrl else {})}

    def _server_epsilon(self, events: list[list[float]]) -> float:
        key = tuple(tuple(e) for e in events)
        if key not in self._epsilon_memo:  # the same ledger is asked for before and after a round
            self._epsilon_memo[key] = self._compute_epsilon(events)
        return self._epsilon_memo[key]

    def _compute_epsilon(self, events: list[list[float]]) -> float:
        if self.ftrl:
            return dpftrl_epsilon(self.noise_multiplier, self.tree.trees, delta=self.delta, accountant=self.accountant)
        return dpfedavg_epsilon_events(
            [tuple(e) for e in events], delta=self.delta, sampling=self.sampling, accountant=self.accountant
        )

    def _round_event(self, arrived: int, sampled_from: int | None = None) -> list[float]:
        """[z, m, N] as booked: Poisson rounds at q = m / population whoever is connected; fixed-size
        rounds with the N devices they really sampled from (more or fewer than at the start)."""
        if self.cohort and self.sampling == "poisson":
            return [self.noise_multiplier, self.sampled, self.population]
        n = int(sampled_from or self.population)
        m = min(self.sampled, n)
        if self.cohort:  # noise z C on the sum itself: the same multiplier however many arrive
            return [self.noise_multiplier, m, n]
        return [self.noise_multiplier * arrived / self.sampled, m, n]

    def private_sum(self, replies: list[Message], global_arrays: ArrayRecord, server_round: int) -> list[Message]:
        """Cohort engine, server mode: the clipped users' sum + N(0, (z C)^2), over the expected cohort
        size, as one reply for the strategy (its weighted mean is then exactly this)."""
        privacy = self.config.privacy
        rng = (
            np.random.default_rng([self.config.train.seed, server_round, client_seed(0, server_round, -2)])
            if privacy.reproducible_dp_noise
            else randomness.secret_rng()
        )
        start = global_arrays.to_numpy_ndarrays()
        names = list(global_arrays.keys())
        total = [np.zeros_like(a, dtype=np.float64) for a in start]
        users = 0
        for reply in replies:
            n = int(reply.content["metrics"]["num-examples"])
            users += n
            for acc, mean, base in zip(total, reply.content["arrays"].to_numpy_ndarrays(), start):
                acc += (mean.astype(np.float64) - base) * n  # this node's users' clipped sum
        clip = self.clip
        unclipped = sum(
            int(r.content["metrics"]["num-examples"]) - int(r.content["metrics"].get("clipped", 0)) for r in replies
        )
        noise = self.round_noise.noise(
            [a.shape for a in total],
            self.update_multiplier * clip,
            rng,
            pass_index=participation.tree_of(server_round, self.rounds_in_tree)[0],
        )
        noisy = {
            name: (base + (acc + draw) / self.sampled).astype(base.dtype)
            for name, base, acc, draw in zip(names, start, total, noise)
        }
        if self.adaptive:  # C for the next round, from this round's noisy count (its cost is in z)
            self.clip_by_round[server_round] = clip
            self.adaptive.step(unclipped, users, self.sampled, rng)
        combined = replies[0]
        combined.content = RecordDict(
            {
                "arrays": ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in noisy.items()}),
                "metrics": MetricRecord({"num-examples": 1, "unit-weight": 1}),
            }
        )
        return [combined]

    def epsilon_after(self, arrived: int, sampled_from: int | None = None) -> float:
        """Server mode: the run's epsilon if a round with `arrived` contributing clients were released."""
        if self.ftrl:
            return (
                dpftrl_epsilon(self.noise_multiplier, self._trees_after(), delta=self.delta, accountant=self.accountant)
                if arrived
                else self._server_epsilon(self.events)
            )
        after = self.events + [self._round_event(arrived, sampled_from)] if arrived else self.events
        return self._server_epsilon(after)

    def _trees_after(self) -> list[list[int]]:
        """DP-FTRL's trees if the next round were released."""
        trees = [list(t) for t in self.tree.trees]
        pass_index = participation.tree_of(self._next_round, self.rounds_in_tree)[0]
        while len(trees) <= pass_index:
            trees.append([])
        if self.tree.tree is not None and self.tree.pass_index == pass_index and self.tree.position > 0:
            trees[pass_index][-1] += 1
        else:
            trees[pass_index].append(1)
        return trees

    def _cap(self) -> float:
        return self.config.privacy.cap if self.mode == "server" else 0.0

    @property
    def cap_name(self) -> str:
        return "max-epsilon" if self.config.privacy.max_epsilon else "target-epsilon"

    def allows(self, server_round: int, sampled_from: int | None = None) -> bool:
        """False when even a round in which every sampled client replies would pass the cap."""
        self._next_round = server_round
        return self._cap() <= 0 or self.epsilon_after(self.sampled, sampled_from) <= self._cap() * (1 + CAP_SLACK)

    def refuses(self, arrived: int, sampled_from: int | None = None) -> str | None:
        """Why a round with `arrived` contributing clients must not be aggregated (None: it may)."""
        cap = self._cap()
        if cap <= 0 or not arrived:
            return None
        epsilon = self.epsilon_after(arrived, sampled_from)
        if epsilon <= cap * (1 + CAP_SLACK):
            return None
        return (
            f"{arrived} of {self.sampled} sampled clients replied; releasing that round would spend "
            f"epsilon {epsilon:.3f} > {self.cap_name} {cap:g} (delta {self.delta:.2e})"
        )

    def record(
        self, server_round: int, per_client: dict[int, dict], arrived: int, sampled_from: int | None = None
    ) -> dict:
        """Book a released round: `arrived` clients' updates were aggregated (server mode)."""
        if self.mode == "none":
            return {}
        if self.mode == "server":
            if arrived:
                self.events.append(self._round_event(arrived, sampled_from))
                if self.ftrl:
                    self.tree.book()
            epsilon = self._server_epsilon(self.events)
        else:
            for key, metrics in per_client.items():
                if "epsilon" in metrics:
                    self.client_epsilon[key] = float(metrics["epsilon"])
                if "user-level" in metrics:
                    self.client_unit[key] = "user" if int(metrics["user-level"]) else "event"
                if "dp-noise-reproducible" in metrics:
                    self.client_noise[key] = (
                        randomness.REPRODUCIBLE if int(metrics["dp-noise-reproducible"]) else randomness.SECRET
                    )
                self.declined += int(metrics.get("declined", 0))
            epsilon = max(self.client_epsilon.values(), default=0.0)
        self.epsilon_by_round[server_round] = epsilon
        return {"epsilon": epsilon}

    def state_dict(self) -> dict:
        return {
            "epsilon_by_round": {str(k): v for k, v in self.epsilon_by_round.items()},
            "events": self.events,
            "client_epsilon": {str(k): v for k, v in self.client_epsilon.items()},
            "client_unit": {str(k): v for k, v in self.client_unit.items()},
            "client_noise": {str(k): v for k, v in self.client_noise.items()},
            "declined": self.declined,
            "sampling": self.sampling,
            "mechanism": self.mechanism,
            "noise_multiplier": self.noise_multiplier,
            "planned_rounds": self.planned_rounds,
            "accountant": self.accountant,
            **(
                {"trees": self.tree.trees, "rounds_in_tree": self.rounds_in_tree, "max_participations": self.cap}
                if self.ftrl
                else {}
            ),
            **(
                {
                    "clip": self.adaptive.clip,
                    "clip_by_round": {str(k): v for k, v in self.clip_by_round.items()},
                    "update_noise_multiplier": self.update_multiplier,
                }
                if self.adaptive
                else {}
            ),
        }
