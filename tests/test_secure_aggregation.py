"""SecAgg+ rounds: the server learns only the nodes' weighted mean, and it equals the plain one."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_model
from common.config import RunConfig
from common.errors import ConfigError
from tests.conftest import COHORT, _run

pytestmark = pytest.mark.usefixtures("cache_env")

RUN = {**COHORT, "num-server-rounds": 2, "strategy": "fedavg", "eval-every-rounds": 2}


def _final(out) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(out / "model.pt")
    return model.arrays()


def test_secure_aggregation_needs_devices_that_clip_themselves():
    with pytest.raises(ConfigError, match="cohort-engine"):
        RunConfig.from_flat({"secure-aggregation": True})


def test_secagg_round_gives_the_plain_rounds_model(cache, tmp_path):
    plain, secure = tmp_path / "plain", tmp_path / "secure"
    _run({**RUN, "cohort-nodes": 3, "out-dir": str(plain)}, cache, num_supernodes=3)
    log = _run({**RUN, "cohort-nodes": 3, "secure-aggregation": True, "out-dir": str(secure)}, cache, num_supernodes=3)
    assert "Secure aggregation commencing" in log
    rows = [json.loads(line) for line in (secure / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("secure-aggregation") == 1 for r in rows)
    a, b = _final(plain), _final(secure)
    for key in a:  # quantisation (2^22 levels over +-8, scaled by users / max weight) is the only difference
        assert torch.allclose(a[key], b[key], atol=5e-5), key


def test_user_level_dp_fedavg_through_secagg(cache, tmp_path):
    from common.privacy.server_accounting import dpfedavg_epsilon

    out = tmp_path / "dp-secure"
    _run(
        {
            **RUN,
            "cohort-nodes": 3,
            "secure-aggregation": True,
            "dp-mode": "server",
            "user-sampling": "poisson",
            "noise-multiplier": 1.0,
            "clipping-norm": 0.5,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=3,
    )
    report = json.loads((out / "privacy.json").read_text())
    assert report["epsilon"] == pytest.approx(
        dpfedavg_epsilon(
            noise_multiplier=1.0,
            num_sampled=60,
            population=report["clients"],
            rounds=2,
            delta=report["delta"],
            sampling="poisson",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["test"]["ndcg@10"] > 0


@pytest.mark.slow
def test_secagg_with_user_level_dp_in_a_loopback_deployment(tmp_path, monkeypatch):
    """Two real SuperNodes (TLS, node auth) whose devices clip each user's update; SecAgg+ sums them,
    and the server adds the DP noise to that sum: it never sees one device's update."""
    from common.data.synthetic import synthetic_interactions
    from simulations.deployment_data import write_node_files
    from simulations.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition

    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    data_file = tmp_path / "interactions.csv"
    synthetic_interactions(2, 40, seed=0).to_csv(data_file, index=False)  # one user per device
    run_config = {
        "min-item-count": 1,
        "model": "sasrec",
        "emb-dim": 16,
        "num-layers": 1,
        "max-len": 20,
        "dropout": 0.0,
        "num-threads": 1,
        "partition": "user",
        "train-windows": "last",
        "cohort-engine": True,
        "local-optimizer": "sgd",
        "local-lr": 1.0,
        "strategy": "fedavg",
        "num-server-rounds": 2,
        "clients-per-round": 2,
        "secure-aggregation": True,
        "dp-mode": "server",
        "noise-multiplier": 0.5,
        "clipping-norm": 1.0,
        "data": str(data_file),
        "out-dir": str(tmp_path / "run"),
        "seed": 7,
    }
    config = RunConfig.from_flat(run_config, where="test")
    write_node_files(config, tmp_path / "partition", 2)
    nodes = nodes_from_partition(tmp_path / "partition", tmp_path / "work")
    run_config.update(
        {
            "data": str(tmp_path / "not-on-the-server.csv"),
            "federated-evaluation": True,
            "catalogue-path": str(tmp_path / "partition" / "catalogue.json"),
        }
    )
    deployment = LoopbackDeployment(tmp_path / "work", nodes, startup_timeout=300, stop_grace=20)
    try:
        with deployment:
            try:
                log = deployment.run(run_config, timeout=900)
            except DeploymentError as exc:
                pytest.fail(str(exc))
            status = deployment.run_info(deployment.run_id)["status"]
    finally:
        assert deployment.alive() == []
    assert status == "finished:completed"
    assert "Secure aggregation commencing" in log.read_text(errors="replace")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["secure-aggregation"] == 1 for r in rows)
    assert all(r["sampled"] == r["replied"] == 2 for r in rows)  # both devices, summed under masks
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["epsilon"] > 0 and report["dp_mode"] == "server"


@pytest.mark.slow
def test_secagg_sum_equals_the_plain_sum_in_a_loopback_deployment(tmp_path, monkeypatch):
    """Three real SuperNodes (TLS, node auth), one user each, one SecAgg+ round without DP: the
    released model equals global + the users' mean update, each update recomputed here from that
    device's own file, within SecAgg+'s quantisation."""
    import numpy as np

    from common.cohort_clients import train_chunks
    from common.data.synthetic import synthetic_interactions
    from common.training import model_for
    from simulations.deployment_data import write_node_files
    from simulations.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition

    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    data_file = tmp_path / "interactions.csv"
    synthetic_interactions(3, 40, seed=1).to_csv(data_file, index=False)
    run_config = {
        "min-item-count": 1,
        "model": "sasrec",
        "emb-dim": 16,
        "num-layers": 1,
        "max-len": 20,
        "dropout": 0.0,  # no random draws on the devices: the recomputation below is exact
        "num-threads": 1,
        "partition": "user",
        "train-windows": "last",
        "cohort-engine": True,
        "local-optimizer": "sgd",
        "local-lr": 1.0,
        "strategy": "fedavg",
        "num-server-rounds": 1,
        "clients-per-round": 3,
        "secure-aggregation": True,
        "data": str(data_file),
        "out-dir": str(tmp_path / "run"),
        "seed": 11,
    }
    write_node_files(RunConfig.from_flat(run_config, where="test"), tmp_path / "partition", 3)
    nodes = nodes_from_partition(tmp_path / "partition", tmp_path / "work")
    catalogue = tmp_path / "partition" / "catalogue.json"
    run_config.update(
        {
            "data": str(tmp_path / "not-on-the-server.csv"),
            "federated-evaluation": True,
            "catalogue-path": str(catalogue),
        }
    )
    deployment = LoopbackDeployment(tmp_path / "work", nodes, startup_timeout=300, stop_grace=20)
    try:
        with deployment:
            try:
                log = deployment.run(run_config, timeout=900)
            except DeploymentError as exc:
                pytest.fail(str(exc))
    finally:
        assert deployment.alive() == []
    assert "Secure aggregation commencing" in log.read_text(errors="replace")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["secure-aggregation"] == 1 and rows[0]["replied"] == 3

    # The plain sum, from what each device holds: its own file and the global model of round 0.
    from client.local_data import load_local_data

    config = RunConfig.from_flat(run_config, where="test")
    start = model_for(config, len(json.loads(catalogue.read_text())) - 1).arrays()
    total, users = {k: torch.zeros_like(v) for k, v in start.items()}, 0
    for node in sorted((tmp_path / "partition").glob("node-*.csv")):
        local = load_local_data(config, {"data-path": str(node), "catalogue-path": str(catalogue), "client-id": 0})
        result = train_chunks(config, local, [(0, np.arange(local.num_users))], start, 1)
        count = result.metrics["users"]
        for k in total:
            total[k] += (result.arrays[k] - start[k]) * count
        users += count
    assert users == 3
    released = _final(tmp_path / "run")
    moved = 0
    for key, value in start.items():
        expected = value + total[key] / users
        moved += not torch.allclose(expected, value)
        assert torch.allclose(released[key], expected, atol=5e-5), key
    assert moved >= len(start) // 2  # the round moved most weights: equality is not start == start
