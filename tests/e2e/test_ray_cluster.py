"""`fedseqrec federate --ray-address` on an existing Ray cluster: a head and one worker node, two
`ray start` processes on this machine (free ports, a private temp dir, stopped by pid: never
`ray stop`, which would end every Ray on the machine). The cohort engine's smoke job runs its two
SuperNode actors one on each node and ends with the model of the same job run in one process
(Flower's engine with the ClientApp called in that process: tests/conftest.py `_run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedseqrec.launch.processes import VENV_BIN
from tests.conftest import COHORT, ROOT, _run
from tests.ray_nodes import LocalRayCluster

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


def ray_tasks(cluster: LocalRayCluster) -> dict:
    """{"nodes": alive node ids, "runs": {node id: ClientApp messages it ran}}."""
    result = subprocess.run(
        [sys.executable, "-c", _TASKS, cluster.address], capture_output=True, text=True, timeout=120, env=cluster.env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    tasks = ray_tasks(cluster)
    print(f"ClientApp messages per Ray node: {tasks['runs']}")  # shown with -s
    assert len(tasks["nodes"]) == 2 and sorted(tasks["runs"]) == sorted(tasks["nodes"]), tasks
    assert sum(tasks["runs"].values()) >= 2 * JOB["num-server-rounds"], tasks  # 2 SuperNodes' train messages a round

    single = tmp_path / "single-process"
    _run({**JOB, "out-dir": str(single)}, tmp_path / "cache", num_supernodes=JOB["cohort-nodes"])
    ours, reference = _final_arrays(on_cluster), _final_arrays(single)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key
