"""`fedseqrec federate --ray-address` on an existing Ray cluster: a head and one worker node, two
`ray start` processes on this machine (free ports, a private temp dir, stopped by pid: never
`ray stop`, which would end every Ray on the machine). The cohort engine's smoke job runs its two
SuperNode actors one on each node and ends with the model of the single-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from fedseqrec.launch.processes import VENV_BIN, ProcessTracker, free_port
from tests.conftest import COHORT, ROOT

# The cohort smoke job (tests/conftest.py) on two SuperNodes, short: each SuperNode's message is one
# chunk of the round's users, so with one actor per node both nodes train.
JOB = {**COHORT, "cohort-nodes": 2, "num-server-rounds": 2, "num-threads": 1}

# Runs in a child process: the cluster's nodes, and on which node each ClientApp message ran (the
# ClientAppActor.run tasks in Ray's GCS task events; the state API would need the dashboard, which
# `flwr[simulation]` does not install).
_TASKS = """
import json, sys
from collections import Counter
import ray
from ray._private import state
from ray.core.generated import gcs_pb2
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
ran = {}
for raw in state.state._connect_and_get_accessor().get_task_events():
    event = gcs_pb2.TaskEvents.FromString(raw)
    if event.task_info.func_or_class_name == "ClientAppActor.run" and event.state_updates.node_id:
        ran[event.task_id] = event.state_updates.node_id.hex()
print(json.dumps({"nodes": nodes, "runs": Counter(ran.values())}))
ray.shutdown()
"""


class LocalRayCluster:
    """`ray start --head --block` and `ray start --address=... --block`, each node 1 CPU, every port free.

    --block keeps each `ray start` in the foreground with Ray's processes as its children, so the
    tracker (fedseqrec/launch/processes.py) knows them all by pid and stops exactly those."""

    def __init__(self, work: Path, workers: int = 1):
        # Ray's unix sockets live under the temp dir: keep its path short (107 bytes at most).
        self.temp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.work, self.workers = work, workers
        self.tracker = ProcessTracker()
        self.port = free_port()
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, name: str, *args: str) -> None:
        command = [str(VENV_BIN / "ray"), "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1"]
        command += ["--object-store-memory=100000000", "--disable-usage-stats", f"--temp-dir={self.temp}"]
        command += [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
        self.tracker.start(name, command + list(args), self.work / f"{name}.log", self.env, self.work)

    def start(self, timeout: float = 120.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._node(
            "ray-head",
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        )
        self._wait_for("ray-head", timeout)
        for i in range(self.workers):
            self._node(f"ray-worker-{i}", f"--address={self.address}")
            self._wait_for(f"ray-worker-{i}", timeout)

    def _wait_for(self, name: str, timeout: float) -> None:
        log, deadline = self.work / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "block forever" in log.read_text(errors="replace"):  # printed once the node is up
                return
            if self.tracker.started[name].poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{name} did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")

    def tasks(self) -> dict:
        """{"nodes": alive node ids, "runs": {node id: ClientApp messages it ran}}."""
        result = subprocess.run(
            [sys.executable, "-c", _TASKS, self.address], capture_output=True, text=True, timeout=120, env=self.env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        self.tracker.close(20.0)
        alive = self.tracker.alive()
        if not alive:
            shutil.rmtree(self.temp, ignore_errors=True)
        assert alive == [], f"Ray processes still alive: {alive}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _federate(tmp_path: Path, name: str, *extra: str) -> tuple[Path, str]:
    toml = tmp_path / "job.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in JOB.items()))
    out = tmp_path / name
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache"), "FLWR_TELEMETRY_ENABLED": "0"}
    argv = [str(VENV_BIN / "fedseqrec"), "federate", "--run-config", str(toml), "--out-dir", str(out), *extra]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def _final_arrays(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=False)["arrays"]


def test_federate_on_a_two_node_ray_cluster_ends_with_the_single_process_model(cluster, tmp_path):
    on_cluster, shown = _federate(tmp_path, "on-cluster", "--ray-address", cluster.address)
    assert f"on the Ray cluster at {cluster.address}: 2 nodes, 2 CPUs" in shown, shown
    # Flower's pool holds one actor per node (1 CPU each, 1 CPU per client) and Ray placed them, not
    # we: every node ran ClientApp messages, the worker node included.
    tasks = cluster.tasks()
    print(f"ClientApp messages per Ray node: {tasks['runs']}")  # shown with -s
    assert len(tasks["nodes"]) == 2 and sorted(tasks["runs"]) == sorted(tasks["nodes"]), tasks
    assert sum(tasks["runs"].values()) >= 2 * JOB["num-server-rounds"], tasks  # 2 SuperNodes' train messages a round

    single, _ = _federate(tmp_path, "single-process")
    ours, reference = _final_arrays(on_cluster), _final_arrays(single)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key
