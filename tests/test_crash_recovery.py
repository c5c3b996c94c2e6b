"""Crashes in a real deployment: SIGKILL of the ServerApp and of the SuperLink mid-run; the run
resumes from its last checkpoint and ends with the uninterrupted run's model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from common.config import RunConfig

pytestmark = pytest.mark.slow

ROUNDS = 3


def _checkpoint_round(out: Path) -> int:
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["round"])
    except Exception:  # mid-replace on another process's write: look again
        return 0


def _wait_for_round(deployment, proc, out: Path, round_: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while _checkpoint_round(out) < round_:
        assert proc.poll() is None, f"the run ended before round {round_}; see {deployment.logs}"
        assert time.monotonic() < deadline, f"no checkpoint of round {round_} in {timeout} s"
        time.sleep(0.2)


def _final_arrays(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["arrays"]


def test_a_deployment_survives_sigkills_of_its_serverapp_and_superlink(tmp_path, monkeypatch):
    from common.data.synthetic import synthetic_interactions
    from simulations.deployment_data import write_node_files
    from simulations.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition

    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    data_file = tmp_path / "interactions.csv"
    synthetic_interactions(2, 40, seed=3).to_csv(data_file, index=False)  # one user per device
    run_config = {
        "min-item-count": 1,
        "model": "sasrec",
        "emb-dim": 16,
        "num-layers": 1,
        "max-len": 20,
        "dropout": 0.0,  # no random draws: an interrupted run can end exactly where an uninterrupted one does
        "num-threads": 1,
        "partition": "user",
        "train-windows": "last",
        "cohort-engine": True,
        "local-optimizer": "sgd",
        "local-lr": 1.0,
        "strategy": "fedavg",
        "num-server-rounds": ROUNDS,
        "clients-per-round": 2,
        "eval-every-rounds": ROUNDS,  # one evaluation, at the end: fewer ClientApp processes per round
        "data": str(data_file),
        "seed": 5,
    }
    write_node_files(RunConfig.from_flat({**run_config, "out-dir": "x"}, where="test"), tmp_path / "partition", 2)
    nodes = nodes_from_partition(tmp_path / "partition", tmp_path / "work")
    run_config.update(
        {
            "data": str(tmp_path / "not-on-the-server.csv"),
            "federated-evaluation": True,
            "catalogue-path": str(tmp_path / "partition" / "catalogue.json"),
        }
    )
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    deployment = LoopbackDeployment(tmp_path / "work", nodes, startup_timeout=300, stop_grace=20)
    try:
        with deployment:
            try:
                deployment.run({**run_config, "out-dir": str(straight)}, timeout=900)
                config = {**run_config, "out-dir": str(crashed)}

                proc = deployment.submit(config)
                _wait_for_round(deployment, proc, crashed, 1)
                assert deployment.sigkill("flwr-serverapp"), "no ServerApp process to kill"
                deployment.abandon_run()

                proc = deployment.submit(config)  # resumes after round 1
                _wait_for_round(deployment, proc, crashed, 2)
                deployment.restart_superlink()
                deployment.abandon_run()

                deployment.run(config, timeout=900)  # resumes after round 2
            except DeploymentError as exc:
                pytest.fail(str(exc))
    finally:
        assert deployment.alive() == []
    a, b = _final_arrays(straight), _final_arrays(crashed)
    assert torch.load(crashed / "checkpoint.pt", weights_only=True)["round"] == ROUNDS
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
