"""Federation: aggregation against a numpy oracle, partitions, and real simulated runs.

The simulation tests run the real ServerApp/ClientApp on Flower's simulation engine in a child
process (so a test can SIGKILL it mid-run and resume).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import load_model
from common.config import FederationSettings, RunConfig
from common.data.load import load_sequence_data
from common.evaluation import evaluate, model_scores
from common.partition import partition_users
from common.training import model_for
from tests.conftest import ROOT, SIM_CONFIG, _kill_after_round, _run, assert_each_record_once


def _arrays(path: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(path)
    return model.arrays()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("uninterrupted")
    log = _run({**SIM_CONFIG, "out-dir": str(out)}, cache)
    return out, log


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
    from common.partition import user_labels

    labels = user_labels(synthetic_data)

    def spread(scheme):
        parts = partition_users(
            synthetic_data, FederationSettings(partition=scheme, num_partitions=5, dirichlet_alpha=0.1), seed=0
        )
        shares = np.array([np.bincount(labels[c], minlength=10) / len(c) for c in parts.clients])
        return np.abs(shares - shares.mean(0)).sum(1).mean()  # mean L1 distance to the average mix

    assert spread("dirichlet") > 2 * spread("iid")


# --- simulated federation --------------------------------------------------------------------


def test_simulated_federation_improves_validation_ndcg(finished_run, cache, monkeypatch):
    out, log = finished_run
    assert_each_record_once(log)
    monkeypatch.setenv("FEDSEQREC_CACHE", str(cache))
    config = RunConfig.from_flat(SIM_CONFIG)
    data = load_sequence_data(config.data)
    initial = model_for(config, data.num_items)
    initial.eval()
    before = evaluate(model_scores(initial), data, "validation")["ndcg@10"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["replied"] == 4 and r["failed"] == 0 for r in rows)
    assert rows[-1]["validation"]["ndcg@10"] > before + 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["ndcg@10"] > before
    beyond = {"ild@10", "long-tail@10", "gini@10", "popularity@10", "coverage@10", "novelty@10"}
    assert beyond <= set(summary["test"]) and beyond <= set(rows[-1]["validation"])
    groups = summary["metrics_by_group"]["attributes"]  # synthetic data has no users file: activity only
    assert set(groups) == {"activity"}
    assert sum(g["users"] for g in groups["activity"]["groups"].values()) == summary["num_users"]
    for name in ("model.pt", "checkpoint.pt", "validation.png", "loss.png", "config.json"):
        assert (out / name).exists(), name


def test_killed_run_resumes_to_the_uninterrupted_result(finished_run, cache, tmp_path):
    reference, _ = finished_run
    out = tmp_path / "killed"
    run_config = {**SIM_CONFIG, "out-dir": str(out)}
    _kill_after_round(run_config, cache, out, 2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 2 <= state["round"] < 4, "the run should have been killed before its last round"
    assert not (out / "summary.json").exists()
    log = _run(run_config, cache)
    assert "resuming" in log
    resumed, expected = _arrays(out / "model.pt"), _arrays(reference / "model.pt")
    for key in expected:
        assert torch.allclose(resumed[key], expected[key], atol=1e-6), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]


def test_failing_client_does_not_stop_the_round(cache, tmp_path):
    out = tmp_path / "faulty"
    _run({**SIM_CONFIG, "num-server-rounds": 2, "out-dir": str(out)}, cache, client_app="tests.faulty_client:app")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["replied"], r["failed"]) for r in rows] == [(3, 1), (3, 1)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_clients"] == 2 and summary["rounds"] == 2


def test_pyproject_run_config_lists_every_key_with_valid_values():
    import tomllib

    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(defaults) == set(RunConfig.keys())
    RunConfig.from_flat(defaults)
    assert defaults == RunConfig().to_flat()  # one source of defaults: the dataclasses, mirrored here
    for toml in sorted((ROOT / "simulations").glob("*.toml")):
        RunConfig.from_toml(toml)  # every shipped experiment config is valid
