"""The server's side of the cohort engine and of federated evaluation.

Users are sampled by identity each round (fixed-size without replacement, or Poisson with
q = clients-per-round / users), seeded by (run seed, round) so that a resumed run replays. The
sorted sample is cut every `cohort-chunk` users; chunk j goes to hosting SuperNode j mod H.
Chunks, not nodes, fix the computation (`common.training.cohort_clients`), so the result does not depend
on H. Real devices (nodes that identify with a client key) get their own users instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.privacy import participation, randomness

EVALUATED = ("ndcg", "hr", "mrr", "precision", "recall", "f1")


@dataclass
class CohortPlan:
    config: RunConfig
    num_users: int  # one-user clients the hosts simulate (keys 0..num_users-1)
    hosts: list[int]  # node ids of the SuperNodes that host simulated devices
    devices: dict[int, int]  # client key -> node id of real devices (deployment)
    population: int = 0  # what Poisson's rate is set against (0: the keys known now)

    @property
    def keys(self) -> np.ndarray:
        return np.arange(self.num_users) if self.hosts else np.array(sorted(self.devices), dtype=np.int64)

    def sample(self, server_round: int, secret: bool = False) -> np.ndarray:
        """This round's users; `secret` (server-side DP) draws from OS entropy: amplification by
        sampling needs a sample nobody can redo."""
        fed, keys = self.config.federation, self.keys
        if self.config.privacy.dp_mode == "server" and self.config.privacy.server_mechanism == "dp-ftrl":
            return self.ftrl_users(server_round)
        rng = randomness.secret_rng() if secret else np.random.default_rng([self.config.train.seed, server_round])
        if fed.user_sampling == "poisson":  # q is fixed by the population, not by who is connected now
            q = min(1.0, fed.clients_per_round / (self.population or len(keys)))
            return keys[rng.random(len(keys)) < q]
        return np.sort(rng.choice(keys, size=min(fed.clients_per_round, len(keys)), replace=False))

    def ftrl_users(self, server_round: int) -> np.ndarray:
        """DP-FTRL samples nobody: this round's users are those whose slot of the current tree it is."""
        fed, keys = self.config.federation, self.keys
        rounds_in_tree, cap = participation.ftrl_schedule(
            len(keys), fed.clients_per_round, fed.num_server_rounds, self.config.privacy.max_participations
        )
        return participation.scheduled(self.config.train.seed, keys, server_round, rounds_in_tree, cap)

    def schedule_over(self, server_round: int) -> bool:
        """DP-FTRL: this round lies past every user's last allowed tree."""
        privacy, fed = self.config.privacy, self.config.federation
        if not (privacy.dp_mode == "server" and privacy.server_mechanism == "dp-ftrl"):
            return False
        rounds_in_tree, cap = participation.ftrl_schedule(
            len(self.keys), fed.clients_per_round, fed.num_server_rounds, privacy.max_participations
        )
        return participation.tree_of(server_round, rounds_in_tree)[0] >= cap

    def assign(self, users: np.ndarray) -> dict[int, dict]:
        """node id -> the config entries that name its chunks of `users` (sorted client keys)."""
        if not self.hosts:
            return {self.devices[int(u)]: {} for u in users}
        size = self.config.federation.cohort_chunk
        out: dict[int, dict] = {}
        for index, start in enumerate(range(0, len(users), size)):
            chunk = [int(u) for u in users[start : start + size]]
            entry = out.setdefault(
                self.hosts[index % len(self.hosts)], {"chunk-ids": [], "chunk-sizes": [], "chunk-keys": []}
            )
            entry["chunk-ids"].append(index)
            entry["chunk-sizes"].append(len(chunk))
            entry["chunk-keys"].extend(chunk)
        return out


def federated_evaluate(
    grid: Grid,
    plan: CohortPlan,
    arrays: ArrayRecord,
    split: str | tuple[str, ...],
    users: np.ndarray | None,
    server_round: int,
    timeout: float = 3600.0,
) -> dict:
    """Clients rank their own held-out items; the server only combines means weighted by counts.
    `split` "validation" or "test": that split's means (and "users"); a tuple of splits: {split: means}
    from one message per node (a device starts one process for them, not one per split)."""
    splits = (split,) if isinstance(split, str) else tuple(split)
    users = plan.keys if users is None else np.sort(users)
    messages = [
        Message(
            content=RecordDict(
                {
                    "arrays": arrays,
                    "config": ConfigRecord({"split": ",".join(splits), "server-round": server_round, **extra}),
                }
            ),
            message_type=MessageType.EVALUATE,
            dst_node_id=node,
        )
        for node, extra in plan.assign(users).items()
    ]
    sums: dict[str, float] = {}
    count = 0
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(
                f"federated evaluation failed on node {reply.metadata.src_node_id}: {reply.error.reason}"
            )
        metrics = dict(reply.content["metrics"])
        n = int(metrics.pop("num-examples"))
        count += n
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
    if count == 0:
        raise RuntimeError("federated evaluation: no client evaluated any user")
    means = {key: total / count for key, total in sums.items()}
    if isinstance(split, str):
        return means | {"users": count}
    return {
        name: {key.split("/", 1)[1]: value for key, value in means.items() if key.startswith(f"{name}/")}
        | {"users": count}
        for name in splits
    }
