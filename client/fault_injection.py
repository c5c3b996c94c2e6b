"""Simulated faults and attackers, so that the server's defences can be measured.

Only simulated clients (partitions of the run's dataset) obey these settings; a real device never
drops out or attacks because a run config says so. Dropout: each sampled client fails its round
with probability `sim-dropout` (drawn from (seed, round, client), so runs replay). Attackers: a
fixed share `sim-attackers` of the clients, drawn once from the run seed, send instead of their
honest update (reply - global = u):
- sign-flip: global - s u; scale: global + s u; random: global + noise of s times u's norm;
- promote (targeted item promotion with fake users): train on fake histories in which the target
  item follows every item, then boost the update by s (model replacement). On the cohort engine the
  attacker instead adds fake one-user devices (`common.data.fake_users`, `common.training.cohort_clients`).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict

from client.identity import client_key, is_simulated
from common.config import RunConfig


def dropped(seed: int, server_round: int, client: int, share: float) -> bool:
    return share > 0 and np.random.default_rng([seed, server_round, client, 0xD409]).random() < share


def attackers(seed: int, num_clients: int, share: float) -> set[int]:
    """The fixed set of attacking client keys: round(share x clients) of them, at least one if share > 0."""
    count = min(num_clients, max(1, round(share * num_clients))) if share > 0 else 0
    return set(np.random.default_rng([seed, 0xA77AC]).permutation(num_clients)[:count].tolist())


def poisoned(attack: str, update: dict[str, np.ndarray], scale: float, rng: np.random.Generator) -> dict:
    """An attacker's update (the honest update `update` turned against the model)."""
    if attack == "sign-flip":
        return {k: -scale * u for k, u in update.items()}
    if attack in ("scale", "promote"):
        return {k: scale * u for k, u in update.items()}
    if attack == "random":
        norm = math.sqrt(sum(float(np.square(u).sum()) for u in update.values()))
        size = sum(u.size for u in update.values())
        return {k: rng.normal(0.0, scale * norm / math.sqrt(size), u.shape).astype(u.dtype) for k, u in update.items()}
    raise ValueError(f"unknown attack {attack!r}")


def fault_injection_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower client mod: on a simulated client, drop out or attack as the run config asks."""
    if msg.metadata.message_type != MessageType.TRAIN or not is_simulated(context.node_config):
        return call_next(msg, context)
    config = RunConfig.from_flat(context.run_config)
    fed, seed = config.federation, config.train.seed
    round_config = msg.content["config"]
    server_round = int(round_config["server-round"])
    if fed.cohort_engine or (fed.sim_dropout == 0 and fed.sim_attack == "none"):
        return call_next(msg, context)  # the cohort engine drops users itself (client.handlers)
    # Only a round that drops out or attacks needs torch and the data stack (the mod runs on every message).
    import torch

    from client.local_data import load_local_data
    from common.data.fake_users import fake_users, profile_popularity
    from common.data.partition import cached_partitioning
    from common.recipes import local_training
    from common.training.federated import local_train

    key = client_key(context.node_config)
    if dropped(seed, server_round, key, fed.sim_dropout):
        raise RuntimeError("simulated dropout (sim-dropout): this client went offline")
    num_clients = cached_partitioning(config.data, config.federation, seed).num_clients
    if fed.sim_attack == "none" or key not in attackers(seed, num_clients, fed.sim_attackers):
        return call_next(msg, context)
    global_arrays = msg.content["arrays"].to_torch_state_dict()
    if fed.sim_attack == "promote":
        local = load_local_data(config, context.node_config)
        result = local_train(
            local_training(config, local.num_items),
            fake_users(local, fed.sim_target_item, seed, profile_popularity(fed, local)),
            global_arrays,
            server_round=server_round,
            client=key,
        )
        arrays, metrics = result.arrays, result.metrics
    else:
        reply = call_next(msg, context)
        if "arrays" not in reply.content:
            return reply
        arrays, metrics = reply.content["arrays"].to_torch_state_dict(), dict(reply.content["metrics"])
    honest = {k: (arrays[k] - global_arrays[k]).numpy() for k in global_arrays}
    rng = np.random.default_rng([seed, server_round, key, 0xBAD])
    bad = poisoned(fed.sim_attack, honest, fed.sim_attack_scale, rng)
    out = {k: global_arrays[k] + torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics), "arrays": ArrayRecord(out)}), reply_to=msg)


def drop_cohort_users(
    config: RunConfig, round_config, chunks: list[tuple[int, np.ndarray]], server_round: int
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """Cohort engine: each simulated user of the round drops out with probability sim-dropout."""
    share, seed = config.federation.sim_dropout, config.train.seed
    keys = [int(k) for k in round_config["chunk-keys"]]
    kept, lost, start = [], 0, 0
    for index, rows in chunks:
        stay = np.array(
            [not dropped(seed, server_round, k, share) for k in keys[start : start + len(rows)]], dtype=bool
        )
        start += len(rows)
        lost += int((~stay).sum())
        kept.append((index, rows[stay]))
    return kept, lost
