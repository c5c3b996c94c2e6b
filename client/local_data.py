"""Where a client's users come from.

Simulation: node config `partition-id` selects a partition of the run's dataset (loaded once per
worker process, split once). Deployment: node config `data-path` is the device's own
interactions file and `catalogue-path` the federation's item list (JSON of original item IDs in
model index order, index 0 = padding), so the device's data never has to leave it.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from client.identity import client_key, is_simulated
from common.config import RunConfig
from common.data.fake_users import population_with_fakes, simulated_devices
from common.data.interactions import Columns, load_interactions
from common.data.partition import cached_partitioning, cached_population
from common.data.sequences import SequenceData, sequences_for_catalogue
from common.errors import ConfigError, DataError
from common.node_config import check_node_keys, node_setting
from common.outputs import check_output_dir
from common.training.federated import DeviceLimits, check_local_data


def read_catalogue(path: str | Path, whose: str) -> np.ndarray:
    """(N + 1,) original item IDs in model index order from a catalogue.json, or a DataError that
    says what is wrong with it; `whose` names the setting it came from."""
    todo = "it must be the JSON list of original item IDs that `fedseqrec partition` writes"
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax, or bytes that are not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:80]
        reason = "nested too deeply" if isinstance(exc, RecursionError) else reason
        raise DataError(f"{whose} {path}: cannot read the item catalogue ({reason}); {todo}") from exc
    if not isinstance(blob, list) or len(blob) < 2 or not all(type(i) is int for i in blob):
        raise DataError(f"{whose} {path}: not a list of at least two integer item IDs; {todo}")
    if len(set(blob[1:])) < len(blob) - 1:  # index 0 is the padding; each item has one index
        twice = next(i for i, n in Counter(blob[1:]).items() if n > 1)
        raise DataError(f"{whose} {path}: item ID {str(twice)[:20]} is listed twice; {todo}")
    return np.asarray(blob, dtype=np.int64)


@lru_cache(maxsize=8)
def _device_data(data_path: str, catalogue_path: str, columns: Columns) -> SequenceData:
    item_ids = read_catalogue(catalogue_path, "node config catalogue-path")
    if not Path(data_path).is_file():
        raise DataError(f"node config data-path {data_path}: no such file; point it at this device's interactions file")
    return sequences_for_catalogue(load_interactions(data_path, columns), item_ids, source=data_path)


def load_local_data(config: RunConfig, node_config: dict) -> SequenceData:
    if "data-path" in node_config:
        if "catalogue-path" not in node_config:
            raise DataError(
                "node config has data-path but no catalogue-path; give the federation's "
                "item catalogue (written by `fedseqrec partition`)"
            )
        columns = Columns(config.data.user_col, config.data.item_col, config.data.time_col)
        data_path = node_setting(node_config, "data-path")
        local = _device_data(data_path, node_setting(node_config, "catalogue-path"), columns)
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
    one-user clients named by `chunk_keys`, on a device all of its own users.

    Under a simulated promotion attack, keys past the real users' are the attacker's fake users,
    whose rows follow the real users' in the data (`common.data.fake_users.population_with_fakes`)."""
    if not is_simulated(node_config):
        local = load_local_data(config, node_config)
        return local, np.arange(local.num_users)
    partitioning = cached_partitioning(config.data, config.federation, config.train.seed)
    population, real = population_with_fakes(config.data, config.federation, config.train.seed)
    devices = simulated_devices(config.federation, partitioning.num_clients)
    keys = np.asarray(chunk_keys or [], dtype=np.int64)
    if len(keys) and (keys.min() < 0 or keys.max() >= devices):
        raise DataError(f"cohort users {keys.min()}..{keys.max()} outside the run's {devices} one-user clients")
    clients = partitioning.num_clients
    rows = np.array([partitioning.clients[k][0] if k < clients else real + k - clients for k in keys], dtype=np.int64)
    return population, rows


def check_device(config: RunConfig, node_config: dict) -> str:
    """Everything a device's ClientApp will read from its node config, checked before its owner starts
    a SuperNode: known keys with typed values, its identity and limits, a writable state folder, and
    its data against the catalogue. Returns a one-line summary; raises a FedSeqRecError otherwise."""
    check_node_keys(node_config)
    if "data-path" not in node_config:
        raise ConfigError(
            "node config has no data-path; a device needs data-path, catalogue-path and client-id "
            "(see docs/deployment.md)"
        )
    key = client_key(node_config)
    limits = DeviceLimits.from_node_config(node_config)
    if "state-dir" in node_config:
        check_output_dir(Path(node_setting(node_config, "state-dir")), "node config state-dir")
    local = load_local_data(config, node_config)
    return (
        f"client-id {key}: {local.num_users} user(s), {int(local.lengths().sum())} interactions of "
        f"{local.num_items} catalogue items; max-epsilon {limits.max_epsilon or 'run default'}, "
        f"train {str(limits.train).lower()}"
    )
