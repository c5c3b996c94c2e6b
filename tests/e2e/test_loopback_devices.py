"""Real one-user devices on loopback: two SuperNodes (TLS, node authentication), each with one
user's file, shared by the tests of this module (a deployment takes a while to start).

- TLS on every API and node authentication: a SuperNode whose key was never registered is refused;
  a SecAgg+ round without DP releases global + the users' mean update, recomputed here from each
  device's own file.
- SecAgg+ with user-level DP-FedAvg: the devices clip, the server adds noise to the masked sum.
- Crashes: SIGKILL of the ServerApp, of the SuperLink and of a SuperNode mid-round; the run resumes,
  repeats the round the dead device missed, and ends with the model of an uninterrupted plain run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.model.checkpoint import load_model
from fedseqrec.launch.credentials import make_node_keys
from fedseqrec.launch.processes import VENV_BIN, free_port
from simulations.benchmarks.robustness.crash_drill import (
    DRILL_MODEL,
    DRILL_TIMINGS,
    checkpoint_round,
    expected_model,
    final_arrays,
    node_log_size,
    retrying,
    wait_for_round,
    wait_for_training,
)
from tests.conftest import assert_each_record_once

DEVICES = 2  # each ClientApp message is a fresh process: two devices keep the module at a few minutes
BASE = {**DRILL_MODEL, "clients-per-round": DEVICES}


class Devices:
    def __init__(self, deployment, root: Path, server_config: dict):
        self.deployment, self.root, self.server_config = deployment, root, server_config

    def run(self, extra: dict, out: Path) -> Path:
        from fedseqrec.launch.loopback import DeploymentError

        try:
            return self.deployment.run({**self.server_config, **extra, "out-dir": str(out)}, timeout=900)
        except DeploymentError as exc:
            pytest.fail(str(exc))

    def run_log(self, extra: dict, out: Path) -> str:
        """Run, and return this run's part of the deployment's `flwr run` log (appended run after run)."""
        log = self.deployment.logs / "flwr-run.log"
        start = log.stat().st_size if log.exists() else 0
        self.run(extra, out)
        with open(log, "rb") as handle:
            handle.seek(start)
            return handle.read().decode(errors="replace")

    def expected(self, extra: dict, rounds: int) -> dict[str, torch.Tensor]:
        """What an uninterrupted run ends with, recomputed here from the devices' own files."""
        return expected_model({**self.server_config, **extra}, self.root / "partition", rounds)


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    from common.data.synthetic import synthetic_interactions
    from fedseqrec.deployment_data import write_node_files
    from fedseqrec.launch.loopback import LoopbackDeployment, nodes_from_partition

    root = tmp_path_factory.mktemp("devices")
    data_file = root / "interactions.csv"
    synthetic_interactions(DEVICES, 40, seed=1).to_csv(data_file, index=False)  # one user per device
    write_node_files(RunConfig.from_flat({**BASE, "data": str(data_file)}, where="test"), root / "partition", DEVICES)
    nodes = nodes_from_partition(root / "partition", root / "work")
    server_config = {  # the server holds no interactions: only the item catalogue
        **BASE,
        "data": str(root / "not-on-the-server.csv"),
        "federated-evaluation": True,
        "catalogue-path": str(root / "partition" / "catalogue.json"),
    }
    deployment = LoopbackDeployment(
        root / "work",
        nodes,
        startup_timeout=300,
        stop_grace=20,
        extra_env={"FEDSEQREC_CACHE": str(root / "cache")},
        **DRILL_TIMINGS,
    )
    try:
        with deployment:
            _start_a_rogue_node(deployment, root, nodes[0].node_config())
            yield Devices(deployment, root, server_config)
    finally:
        assert deployment.alive() == []


def _start_a_rogue_node(deployment, root: Path, node_config: str) -> None:
    """A SuperNode with a key the SuperLink never registered: refused, it gives up after 1 retry."""
    rogue = make_node_keys(root / "work" / "keys", "rogue")
    command = [
        str(VENV_BIN / "flower-supernode"),
        "--superlink",
        deployment.address,
        "--port",
        str(free_port()),
        "--root-certificates",
        str(deployment.certificates.ca_cert),
        "--auth-supernode-private-key",
        str(rogue.private_key),
        "--max-retries",
        "1",
        "--node-config",
        node_config,
    ]
    home = root / "work" / "rogue-home"
    deployment.tracker.start("rogue", command, deployment.logs / "rogue.log", deployment._env(home), deployment.work)


def _final(out: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(out / "model.pt")
    return model.arrays()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tls_node_auth_and_a_secagg_round_that_ends_with_the_devices_mean_update(devices, tmp_path):
    """TLS on every API, a rogue node refused, and one SecAgg+ round without DP: the released model is
    global + the users' mean update, recomputed here from the devices' own files, within SecAgg+'s
    quantisation; the server never held their data. (The crash drill below checks a plain run's
    rounds against the same recomputation to 1e-5.)"""
    extra = {"num-server-rounds": 1, "secure-aggregation": True}
    output = devices.run_log(extra, tmp_path / "run")
    deployment = devices.deployment
    assert deployment.run_info(deployment.run_id)["status"] == "finished:completed"
    superlink_log = (deployment.logs / "superlink.log").read_text(errors="replace")
    assert "--ssl-certfile" in superlink_log and "--enable-supernode-auth" in superlink_log
    assert "Uvicorn running on https://" in superlink_log  # TLS on every API
    assert "No SuperNode found with the given public key" in superlink_log  # the rogue node was refused
    assert (deployment.work / "flwr-home" / "cli" / "config.toml").read_text().count("root-certificates") == 1
    assert_each_record_once(output)
    assert "Secure aggregation commencing" in output

    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["failed_clients"] == 0
    rows = _rows(out)
    assert [row["round"] for row in rows] == [1]
    assert rows[0]["secure-aggregation"] == 1
    assert all(row["sampled"] == row["replied"] == DEVICES for row in rows)  # the rogue node never counted
    assert rows[-1]["validation"]["users"] == DEVICES  # ranked on the devices
    assert not (devices.root / "not-on-the-server.csv").exists()
    start, expected, released = devices.expected(extra, 0), devices.expected(extra, 1), _final(out)
    moved = 0
    for key, value in expected.items():
        moved += not torch.allclose(value, start[key])
        assert torch.allclose(released[key], value, atol=5e-5), key
    assert moved >= len(start) // 2  # the round moved most weights: equality is not start == start
    for name in ("supernode-0", "supernode-1", "flwr-run", "rogue"):
        assert (deployment.logs / f"{name}.log").stat().st_size > 0


def test_secagg_with_user_level_dp(devices, tmp_path):
    """The devices clip each user's update; SecAgg+ sums them and the server adds the DP noise to that
    sum: it never sees one device's update."""
    extra = {
        "num-server-rounds": 1,
        "secure-aggregation": True,
        "dp-mode": "server",
        "noise-multiplier": 0.5,
        "clipping-norm": 1.0,
        "population-floor": DEVICES,  # the server holds no data: the guarantee's population is declared
    }
    log = devices.run(extra, tmp_path / "run")
    assert "Secure aggregation commencing" in log.read_text(errors="replace")
    rows = _rows(tmp_path / "run")
    assert rows[0]["secure-aggregation"] == 1 and rows[0]["sampled"] == rows[0]["replied"] == DEVICES
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["epsilon"] > 0 and report["dp_mode"] == "server"
    # The release is the devices' clipped mean (recomputed here) plus Gaussian noise of the size
    # DP-FedAvg promises: std noise-multiplier x clipping-norm / users per coordinate.
    released, clipped_mean = _final(tmp_path / "run"), devices.expected(extra, 1)
    noise = torch.cat([(released[k] - clipped_mean[k]).flatten() for k in clipped_mean])
    assert 0.7 < float(noise.std()) / (0.5 * 1.0 / DEVICES) < 1.4


# -- crashes --------------------------------------------------------------------------------------


def test_sigkills_of_serverapp_superlink_and_a_supernode_end_with_the_uninterrupted_model(devices, tmp_path):
    """One crash per round: the ServerApp after round 1, the SuperLink after round 2, a SuperNode in
    round 3 (its last), which is sent again once the device is back."""
    deployment, out, rounds = devices.deployment, tmp_path / "crashed", 3
    crash = retrying(DEVICES, rounds)
    config = {**devices.server_config, **crash, "out-dir": str(out)}

    proc = deployment.submit(config)
    wait_for_round(deployment, proc, out, 1)
    assert deployment.sigkill("flwr-serverapp"), "no ServerApp process to kill"
    deployment.abandon_run()

    proc = deployment.submit(config)  # resumes after round 1
    wait_for_round(deployment, proc, out, 2)
    deployment.restart_superlink()  # SIGKILL, then started again on its state database
    deployment.abandon_run()

    log_from = node_log_size(deployment, 1)
    proc = deployment.submit(config)  # resumes after round 2
    wait_for_training(deployment, proc, 1, log_from)  # round 3's training is under way on device 1 ...
    assert deployment.sigkill_node(1), "no SuperNode process to kill"  # ... which dies with its ClientApp
    deployment.restart_node(1)
    log = deployment.wait(proc, timeout=900)

    assert checkpoint_round(out) == rounds
    assert "repeated (attempt 2" in log.read_text(errors="replace")
    rows = _rows(out)
    assert [row["round"] for row in rows] == list(range(1, rounds + 1))
    assert all(row["replied"] == DEVICES and "skipped" not in row for row in rows)
    assert any(row["attempts"] > 1 for row in rows[2:])  # the round device 1 missed was sent again
    expected, final = devices.expected(crash, rounds), final_arrays(out)
    for key, value in expected.items():
        assert torch.allclose(final[key], value, atol=1e-5), key
