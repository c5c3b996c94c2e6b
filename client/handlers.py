"""The ClientApp's training and evaluation handlers (`client.app` imports this module on the first
message that trains or evaluates: torch and the data stack load only there).

Only model weights and numeric metrics leave the client: no user IDs, item IDs or histories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message

from client.fault_injection import drop_cohort_users
from client.identity import client_key, is_simulated
from client.local_data import cohort_data, load_local_data
from client.participation import ftrl_own_slots
from client.replies import reply
from common.config import RunConfig
from common.data.fake_users import population_with_fakes
from common.errors import DataError
from common.privacy.ledger import PrivacyLedger
from common.recipes import cohort_training, local_training, ranking
from common.training.cohort_clients import evaluate_users, train_chunks
from common.training.federated import DeviceLimits, local_train

SPLITS = ("validation", "test")  # the held-out items a device ranks: its second-last and last


def _chunks(round_config) -> list[tuple[int, list[int]]]:
    """[(chunk index, client keys)] that the server dealt this simulated node."""
    keys, out, start = list(round_config["chunk-keys"]), [], 0
    for index, size in zip(round_config["chunk-ids"], round_config["chunk-sizes"]):
        out.append((int(index), keys[start : start + int(size)]))
        start += int(size)
    return out


def _cohort_users(round_config, config: RunConfig, node_config) -> tuple:
    """(data, [(chunk index, rows)]) of the users this node is asked for (a device: all of its own)."""
    if "chunk-ids" not in round_config:
        local, rows = cohort_data(config, node_config, None)
        return local, [(0, rows)]
    chunks = _chunks(round_config)
    local, rows = cohort_data(config, node_config, [key for _, keys in chunks for key in keys])
    out, start = [], 0
    for index, keys in chunks:
        out.append((index, rows[start : start + len(keys)]))
        start += len(keys)
    return local, out


def _fakes_from(config: RunConfig) -> int | None:
    """The first fake user's row in a simulated promotion attack's population (None: no attack)."""
    if config.federation.sim_attack != "promote":
        return None
    return population_with_fakes(config.data, config.federation, config.train.seed)[1]


def _use_threads(config: RunConfig) -> None:
    """The run config's `num-threads` for this ClientApp's torch (0: torch's default, every core). A
    SuperNode starts a fresh ClientApp process for each message, and on a small machine several run
    at once (and beside the SuperNode): each with every core, their OpenMP threads can wait on one
    another (a 2-core loopback deployment: up to 10.5 s of CPU per training message against 5-6 s at one)."""
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)


def _cohort_train(msg: Message, context: Context, config: RunConfig) -> Message:
    round_config = msg.content["config"]
    if "clipping-norm" in round_config:  # server DP: this round's C (it moves under adaptive clipping)
        config = config.replace(**{"clipping-norm": float(round_config["clipping-norm"])})
    local, chunks = _cohort_users(round_config, config, context.node_config)
    if config.privacy.dp_mode == "server" and not is_simulated(context.node_config) and local.num_users != 1:
        # The server's divisor (expected cohort) and its accounting count devices as users.
        raise DataError(
            f"this device holds {local.num_users} users; user-level DP on the cohort engine needs "
            "exactly one user per device (split the data with one user per node)"
        )
    server_round = int(round_config["server-round"])
    refused = 0
    if config.privacy.dp_mode == "server" and config.privacy.server_mechanism == "dp-ftrl":
        chunks, refused = ftrl_own_slots(config, context.node_config, round_config, chunks, server_round)
    dropped = 0
    if config.federation.sim_dropout > 0 and is_simulated(context.node_config):
        chunks, dropped = drop_cohort_users(config, round_config, chunks, server_round)
    simulated = is_simulated(context.node_config)
    result = train_chunks(
        cohort_training(config, local.num_items, simulated),
        local,
        chunks,
        msg.content["arrays"].to_torch_state_dict(),
        server_round,
        fakes_from=_fakes_from(config) if simulated else None,
        # a device's users are seeded by its own identity; a host's by their rows in the population
        identity_offset=0 if simulated else client_key(context.node_config) << 20,
    )
    return reply(msg, {**result.metrics, "refused-slot": refused, "dropped-users": dropped}, result.arrays, config)


def _ledger_path(context: Context, round_config, key: int) -> Path:
    """The node's state dir on a device; a per-client folder of the run in simulation."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"])) / "privacy_ledger.json"
    return Path(str(round_config["run-dir"])) / "client-state" / f"client-{key}" / "privacy_ledger.json"


def train(msg: Message, context: Context) -> Message:
    config = RunConfig.from_flat(context.run_config)
    _use_threads(config)
    round_config = msg.content["config"]
    if config.privacy.delta == 0 and "delta" in round_config:  # 1 / users, resolved by the server
        config = config.replace(**{"delta": float(round_config["delta"])})
    limits = DeviceLimits.from_node_config(context.node_config)
    if not limits.train:
        return reply(msg, {"declined": 1, "num-examples": 0}, config=config)
    if config.federation.cohort_engine:
        return _cohort_train(msg, context, config)
    key = client_key(context.node_config)
    local = load_local_data(config, context.node_config)
    ledger = None
    if config.privacy.dp_mode == "client":
        path = _ledger_path(context, round_config, key)
        ledger = PrivacyLedger.load(path, config.privacy.accountant)
    expected_rounds = float(round_config.get("expected-rounds", config.federation.num_server_rounds))
    # a device never takes seed-derived DP noise, whatever the server's config says
    reproducible = config.privacy.reproducible_dp_noise and is_simulated(context.node_config)
    result = local_train(
        local_training(config, local.num_items),
        local,
        msg.content["arrays"].to_torch_state_dict(),
        server_round=int(round_config["server-round"]),
        client=key,
        proximal_mu=float(round_config.get("proximal-mu", 0.0)),
        ledger=ledger,
        limits=limits,
        expected_rounds=expected_rounds,
        reproducible_dp_noise=reproducible,
        reference_samples=int(round_config.get("reference-samples", 0)),
    )
    if ledger is not None:
        ledger.save(path)  # durable: survives restarts of the node or the simulation
    return reply(msg, result.metrics, result.arrays, config)


def evaluate(msg: Message, context: Context) -> Message:
    """Rank this client's own held-out items; only means and a count leave (federated evaluation)."""
    config = RunConfig.from_flat(context.run_config)
    _use_threads(config)
    round_config = msg.content["config"] if "config" in msg.content else {}
    splits = str(round_config.get("split", "validation")).split(",")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"evaluate: split {','.join(unknown)!r} is not one of {', '.join(SPLITS)}")
    arrays = msg.content["arrays"].to_torch_state_dict()
    if config.federation.cohort_engine:
        local, chunks = _cohort_users(round_config, config, context.node_config)
        rows = np.concatenate([rows for _, rows in chunks])
        fakes_from = _fakes_from(config) if is_simulated(context.node_config) else None
        if fakes_from is not None:  # the attacker's fake users are not measured
            rows = rows[rows < fakes_from]
    else:
        local = load_local_data(config, context.node_config)
        rows = np.arange(local.num_users)
    if len(splits) == 1:
        return reply(msg, _evaluate_split(config, local, rows, arrays, splits[0]))
    # several splits in one message (the release's test and validation): keys "<split>/<metric>"
    values = {"num-examples": len(rows)}
    for split in splits:
        metrics = _evaluate_split(config, local, rows, arrays, split)
        values |= {f"{split}/{key}": value for key, value in metrics.items() if key != "num-examples"}
    return reply(msg, values)


def _evaluate_split(config: RunConfig, local, rows: np.ndarray, arrays: dict, split: str) -> dict:
    return evaluate_users(config.model, config.data, ranking(config), config.train.seed, local, rows, arrays, split)
