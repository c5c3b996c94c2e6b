"""Federation: aggregation against a numpy oracle, partitions, and real simulated runs.

The simulation tests run the real ServerApp/ClientApp on Flower's simulation engine in a child
process (so a test can SIGKILL it mid-run and resume).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import FederationSettings, RunConfig
from common.data.load import load_sequence_data
from common.data.partition import partition_users
from tests.conftest import ROOT

# --- aggregation -----------------------------------------------------------------------------


def test_fedavg_aggregation_matches_numpy_oracle():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from server.strategies import build_strategy

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    rng = np.random.default_rng(0)
    weights = [3, 1, 6]
    updates = [
        {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)} for _ in weights
    ]
    replies = []
    for node, (w, update) in enumerate(zip(weights, updates), start=1):
        ask = Message(content=RecordDict({"config": ConfigRecord({})}), message_type="train", dst_node_id=node)
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: torch.as_tensor(v) for k, v in update.items()}),
                "metrics": MetricRecord({"num-examples": w, "train-loss": float(node)}),
            }
        )
        replies.append(Message(content=content, reply_to=ask))
    strategy = build_strategy(RunConfig.from_flat({"strategy": "fedavg"}))
    arrays, metrics = strategy.aggregate_train(1, replies)
    for key in ("a", "b"):
        oracle = np.average(np.stack([u[key] for u in updates]), axis=0, weights=weights)
        assert np.allclose(arrays[key].numpy(), oracle, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx(np.average([1, 2, 3], weights=weights))


# --- partitions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_data(cache):
    with pytest.MonkeyPatch.context() as patch:  # this module's cache, for this load only
        patch.setenv("FEDSEQREC_CACHE", str(cache))
        return load_sequence_data(RunConfig.from_flat({"data": "synthetic", "synthetic-users": 300}).data)


@pytest.mark.parametrize("scheme", ["user", "iid", "dirichlet"])
def test_partitions_cover_members_once_and_exclude_holdout(synthetic_data, scheme):
    fed = FederationSettings(partition=scheme, num_partitions=7, holdout_fraction=0.2, dirichlet_alpha=0.3)
    parts = partition_users(synthetic_data, fed, seed=3)
    members = np.concatenate(parts.clients)
    assert len(members) == len(np.unique(members))  # disjoint
    assert set(members) | set(parts.holdout) == set(range(synthetic_data.num_users))
    assert not set(members) & set(parts.holdout)
    assert len(parts.holdout) == 60
    assert parts.num_clients == (240 if scheme == "user" else 7)
    assert all(len(c) > 0 for c in parts.clients)
    again = partition_users(synthetic_data, fed, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts.clients, again.clients))


def test_dirichlet_partitions_are_skewed_compared_with_iid(synthetic_data):
    from common.data.partition import user_labels

    labels = user_labels(synthetic_data)

    def spread(scheme):
        parts = partition_users(
            synthetic_data, FederationSettings(partition=scheme, num_partitions=5, dirichlet_alpha=0.1), seed=0
        )
        shares = np.array([np.bincount(labels[c], minlength=10) / len(c) for c in parts.clients])
        return np.abs(shares - shares.mean(0)).sum(1).mean()  # mean L1 distance to the average mix

    assert spread("dirichlet") > 2 * spread("iid")


# --- simulated federation --------------------------------------------------------------------


def test_pyproject_run_config_lists_every_key_with_valid_values():
    import tomllib

    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(defaults) == set(RunConfig.keys())
    RunConfig.from_flat(defaults)
    assert defaults == RunConfig().to_flat()  # one source of defaults: the dataclasses, mirrored here
    for toml in sorted((ROOT / "simulations" / "configs").glob("*.toml")):
        RunConfig.from_toml(toml)  # every shipped experiment config is valid


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_server_lr_warms_up_then_stays_or_falls_on_a_cosine(schedule):
    from server.loop import _schedule_server_lr
    from server.strategies import build_strategy

    flat = {"strategy": "fedadam", "server-lr": 0.004, "server-lr-warmup": 4, "num-server-rounds": 20}
    config = RunConfig.from_flat({**flat, "server-lr-schedule": schedule}, where="test")
    strategy = build_strategy(config)
    etas = []
    for server_round in range(1, 21):
        _schedule_server_lr(strategy, config, server_round)
        etas.append(strategy.eta)
    assert etas[:4] == pytest.approx([0.001, 0.002, 0.003, 0.004])  # linear warm-up
    after = np.array(etas[4:])
    if schedule == "constant":
        assert after == pytest.approx(0.004)
    else:  # from the full rate down towards 0, never 0 (the last round still trains)
        assert after[0] == pytest.approx(0.004)
        assert np.all(np.diff(after) < 0)
        assert 0 < after[-1] < 0.0001


def test_a_cosine_server_lr_needs_a_strategy_with_a_server_lr():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="server-lr-schedule"):
        RunConfig.from_flat({"strategy": "fedavg", "server-lr-schedule": "cosine"}, where="test")
