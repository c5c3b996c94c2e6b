"""The federation's round loop: sample clients, train, aggregate, evaluate, checkpoint.

Written out (rather than `Strategy.start`) so that a run can resume at any round, count failed
and declined clients, evaluate on a schedule, and stop at a privacy budget. Aggregation itself
is Flower's strategy code.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.federated import client_seed
from server.run_state import RunState
from server.strategies import strategy_state


class SampledGrid:
    """A view of the grid that shows the strategy only this round's sampled nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name):
        return getattr(self._grid, name)


def discover_clients(grid: Grid, timeout: float) -> dict[int, int]:
    """client-key -> node id, asked once per run: sampling by identity makes runs reproducible
    and resumable even though node ids change between runs."""
    node_ids = sorted(grid.get_node_ids())
    messages = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in node_ids]
    keys = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(WARNING, "node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        keys[int(reply.content["metrics"]["client-key"])] = reply.metadata.src_node_id
    return keys


def sample_clients(keys: list[int], count: int, seed: int, server_round: int) -> list[int]:
    """Uniform sample without replacement, a pure function of (seed, round)."""
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(sorted(keys), size=min(count, len(keys)), replace=False).tolist())


def train_round(grid: Grid, strategy: Strategy, server_round: int, arrays: ArrayRecord,
                node_ids: list[int], config: ConfigRecord, timeout: float,
                order: dict[int, int] | None = None) -> tuple[ArrayRecord | None, dict, dict]:
    """One round of training on the sampled nodes; returns (new arrays or None, round stats).

    `order` maps node id -> client key: replies are aggregated in client-key order, so float
    sums are identical across runs even though node ids are not."""
    view = SampledGrid(grid, node_ids)
    messages = list(strategy.configure_train(server_round, arrays, config, view))
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    replies.sort(key=lambda m: (order or {}).get(m.metadata.src_node_id, m.metadata.src_node_id))
    failed = [r for r in replies if r.has_error()]
    ok = [r for r in replies if not r.has_error()]
    declined = [r for r in ok if "arrays" not in r.content]
    contributing = [r for r in ok if "arrays" in r.content]
    for reply in failed:
        log(WARNING, "round %s: client on node %s failed: %s", server_round, reply.metadata.src_node_id,
            reply.error.reason.strip().splitlines()[-1] if reply.error.reason else "no reason")
    stats = {"sampled": len(node_ids), "replied": len(contributing), "failed": len(failed) + len(node_ids) - len(replies),
             "declined": len(declined)}
    per_client = {(order or {}).get(r.metadata.src_node_id, r.metadata.src_node_id): dict(r.content["metrics"])
                  for r in ok}
    if not contributing:
        return None, stats, per_client
    new_arrays, metrics = strategy.aggregate_train(server_round, contributing)
    if metrics is not None:
        stats["train-loss"] = float(metrics.get("train-loss", float("nan")))
    return new_arrays, stats, per_client


def arrays_to_torch(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def run_rounds(grid: Grid, config: RunConfig, strategy: Strategy, state: RunState, run_dir: Path,
               evaluate_fn, keys: dict[int, int], round_config: dict, privacy=None, timeout: float = 3600.0) -> RunState:
    """Rounds state.round + 1 .. num-server-rounds; checkpoint after each. `privacy` (a
    server.privacy.PrivacyTracker) may stop the run before a round that would exceed the budget
    and records epsilon after each round."""
    fed = config.federation
    log(INFO, "fedseqrec: %d clients available, %d per round", len(keys), min(fed.clients_per_round, len(keys)))
    key = f"ndcg@{config.train.top_k}"
    known_nodes = set(grid.get_node_ids())
    arrays = ArrayRecord(state.arrays)
    started = time.perf_counter()
    for server_round in range(state.round + 1, fed.num_server_rounds + 1):
        if privacy is not None and not privacy.allows(server_round):
            log(INFO, "fedseqrec: stopping before round %s: it would exceed max-epsilon", server_round)
            state.stopped_early = f"max-epsilon reached before round {server_round}"
            break
        round_start = time.perf_counter()
        nodes = set(grid.get_node_ids())
        if nodes != known_nodes:  # a node left, joined, or came back with a new id: ask again who is who
            keys, known_nodes = discover_clients(grid, timeout) or keys, nodes
            log(INFO, "fedseqrec: nodes changed; %d clients identified", len(keys))
        np.random.seed(client_seed(config.train.seed, server_round, -1))  # Flower's DP noise uses numpy's global RNG
        chosen = sample_clients(list(keys), fed.clients_per_round, config.train.seed, server_round)
        new_arrays, stats, per_client = train_round(grid, strategy, server_round, arrays, [keys[c] for c in chosen],
                                                    ConfigRecord(dict(round_config)), timeout,
                                                    {node: key for key, node in keys.items()})
        if new_arrays is not None:
            arrays = new_arrays
        row = {"round": server_round, **stats, "train-seconds": time.perf_counter() - round_start}
        if privacy is not None:
            row.update(privacy.record(server_round, per_client))
            state.privacy = privacy.state_dict()
        if server_round % fed.eval_every_rounds == 0 or server_round == fed.num_server_rounds:
            row["validation"] = evaluate_fn(arrays, "validation")
            if row["validation"][key] > state.best.get("metric", float("-inf")):
                state.best = {"round": server_round, "metric": row["validation"][key],
                              "arrays": arrays_to_torch(arrays)}
        row["seconds"] = time.perf_counter() - round_start
        state.round, state.arrays = server_round, arrays_to_torch(arrays)
        state.history.append(row)
        state.strategy = strategy_state(strategy)
        if server_round % fed.checkpoint_every == 0 or server_round == fed.num_server_rounds:
            state.save(run_dir)
            write_jsonl(Path(run_dir) / "metrics.jsonl", state.history)  # always matches the checkpoint
        val = row.get("validation", {}).get(key)
        log(INFO, "fedseqrec: round %d/%d  clients %d ok, %d failed, %d declined  loss %.4f%s  %.1fs "
            "(elapsed %.0fs)", server_round, fed.num_server_rounds, stats["replied"], stats["failed"],
            stats["declined"], stats.get("train-loss", float("nan")),
            f"  val {key} {val:.4f}" if val is not None else "", row["seconds"], time.perf_counter() - started)
    return state
