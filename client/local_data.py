"""Where a client's users come from.

Simulation: node config `partition-id` selects a partition of the run's dataset (loaded once per
worker process, split once). Deployment: node config `data-path` is the device's own
interactions file and `catalogue-path` the federation's item list (JSON of original item IDs in
model index order, index 0 = padding), so the device's data never has to leave it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.interactions import Columns, load_interactions
from common.data.sequences import SequenceData, sequences_for_catalogue
from common.errors import DataError
from common.federated import check_local_data
from common.partition import cached_partitioning, cached_population


@lru_cache(maxsize=8)
def _device_data(data_path: str, catalogue_path: str, columns: Columns) -> SequenceData:
    try:
        item_ids = np.asarray(json.loads(Path(catalogue_path).read_text()), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{catalogue_path}: cannot read the item catalogue ({exc}); it must be a JSON list "
            "of original item IDs written by `fedseqrec partition`"
        ) from exc
    return sequences_for_catalogue(load_interactions(data_path, columns), item_ids, source=data_path)


def client_key(node_config: dict) -> int:
    """Stable identity of a client: its partition in simulation, its `client-id` on a device."""
    for key in ("partition-id", "client-id"):
        if key in node_config:
            return int(node_config[key])
    raise DataError("node config has neither partition-id (simulation) nor client-id (deployment)")


def is_simulated(node_config: dict) -> bool:
    """A simulated device (a partition of the run's dataset), as opposed to a real one with its own data."""
    return "partition-id" in node_config and "data-path" not in node_config and "state-dir" not in node_config


def load_local_data(config: RunConfig, node_config: dict) -> SequenceData:
    if "data-path" in node_config:
        if "catalogue-path" not in node_config:
            raise DataError(
                "node config has data-path but no catalogue-path; give the federation's "
                "item catalogue (written by `fedseqrec partition`)"
            )
        columns = Columns(config.data.user_col, config.data.item_col, config.data.time_col)
        local = _device_data(str(node_config["data-path"]), str(node_config["catalogue-path"]), columns)
        where = str(node_config["data-path"])
    elif "partition-id" in node_config:
        partitioning = cached_partitioning(config.data, config.federation, config.train.seed)
        pid = int(node_config["partition-id"])
        if pid >= partitioning.num_clients:
            raise DataError(
                f"partition-id {pid} but the run has {partitioning.num_clients} clients "
                f"(partition = {config.federation.partition}); start the simulation with "
                f"num-supernodes = {partitioning.num_clients}"
            )
        local = cached_population(config.data, config.federation, config.train.seed).subset(partitioning.clients[pid])
        where = f"partition {pid}"
    else:
        raise DataError(
            "node config names no data: set partition-id (simulation) or data-path and catalogue-path (deployment)"
        )
    check_local_data(local, where)
    return local


def cohort_data(config: RunConfig, node_config: dict, chunk_keys: list[int] | None) -> tuple[SequenceData, np.ndarray]:
    """The data and rows of the users a cohort-engine node is asked for: on a simulated node the
    one-user clients named by `chunk_keys`, on a device all of its own users."""
    if not is_simulated(node_config):
        local = load_local_data(config, node_config)
        return local, np.arange(local.num_users)
    partitioning = cached_partitioning(config.data, config.federation, config.train.seed)
    keys = np.asarray(chunk_keys or [], dtype=np.int64)
    if len(keys) and (keys.min() < 0 or keys.max() >= partitioning.num_clients):
        raise DataError(
            f"cohort users {keys.min()}..{keys.max()} outside the run's {partitioning.num_clients} one-user clients"
        )
    rows = np.array([partitioning.clients[k][0] for k in keys], dtype=np.int64)
    return cached_population(config.data, config.federation, config.train.seed), rows
