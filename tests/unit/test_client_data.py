"""Where a client's data comes from: simulation partitions and a device's own file + catalogue."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from client.identity import client_key
from client.local_data import load_local_data
from common.config import RunConfig
from common.data.sequences import sequences_for_catalogue
from common.errors import DataError
from common.training.federated import DeviceLimits, effective_max_epsilon
from fedseqrec.deployment_data import write_node_files


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_device_sequences_use_the_federation_catalogue_and_count_unknown_items():
    catalogue = np.array([-1, 100, 200, 300])
    local = sequences_for_catalogue(frame([(7, 300, 2), (7, 100, 1), (7, 999, 3), (8, 200, 1)]), catalogue)
    assert local.num_items == 3 and local.num_users == 2
    assert local.sequence(0).tolist() == [1, 3]  # user 7, chronological, 999 dropped
    assert local.report["unknown_items_dropped"] == 1
    with pytest.raises(DataError, match="catalogue"):
        sequences_for_catalogue(frame([(1, 5, 1)]), catalogue)


@pytest.fixture
def synthetic_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    return RunConfig.from_flat(
        {
            "data": "synthetic",
            "synthetic-users": 50,
            "synthetic-items": 30,
            "min-item-count": 1,
            "partition": "iid",
            "num-partitions": 3,
        }
    )


def test_partition_files_hold_every_user_once_and_load_on_a_device(synthetic_config, tmp_path):
    paths = write_node_files(synthetic_config, tmp_path / "nodes", nodes=3)
    catalogue = json.loads(paths[0].read_text())
    nodes = [pd.read_csv(p) for p in paths[1:]]
    users = [set(n["user_id"]) for n in nodes]
    assert sum(map(len, users)) == 50 and len(set().union(*users)) == 50
    local = load_local_data(
        synthetic_config, {"data-path": str(paths[1]), "catalogue-path": str(paths[0]), "client-id": 0}
    )
    assert local.num_users == len(users[0]) and local.num_items == len(catalogue) - 1
    assert local.report["unknown_items_dropped"] == 0


def test_bad_node_configs_get_clear_errors(synthetic_config, tmp_path):
    with pytest.raises(DataError, match="catalogue-path"):
        load_local_data(synthetic_config, {"data-path": "x.csv"})
    with pytest.raises(DataError, match="names no data"):
        load_local_data(synthetic_config, {})
    with pytest.raises(DataError, match="num-supernodes = 3"):
        load_local_data(synthetic_config, {"partition-id": 7})
    with pytest.raises(DataError, match="JSON list"):
        bad = tmp_path / "catalogue.json"
        bad.write_text("not json")
        load_local_data(synthetic_config, {"data-path": "x.csv", "catalogue-path": str(bad)})
    with pytest.raises(DataError, match="client-id"):
        client_key({})


def test_device_owner_settings():
    limits = DeviceLimits.from_node_config({"max-epsilon": 2.0, "train": False, "max-train-seconds": 30})
    assert limits == DeviceLimits(2.0, False, 30.0)
    assert effective_max_epsilon(8.0, 2.0) == 2.0
    assert effective_max_epsilon(0.0, 2.0) == 2.0
    assert effective_max_epsilon(0.0, 0.0) == 0.0
