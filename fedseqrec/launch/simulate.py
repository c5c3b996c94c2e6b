"""Run the ServerApp and ClientApp from this process on Flower's simulation engine: the ClientApp in
Ray actors, or (`backend = "in-process"`) called in this process with no Ray at all.

`flwr run .` is the main road; this launcher runs the very same apps with a given run config for
tests and benchmarks, without a SuperLink. It uses Flower's internal `_run_simulation` (the engine
that `flwr-simulation` itself calls).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]
BACKENDS = ("ray", "in-process")


def num_supernodes(config) -> int:
    """SuperNodes a simulation of `config` (a RunConfig) needs: the cohort engine's hosts, else one
    per client of the partition."""
    if config.federation.cohort_engine:
        return config.federation.cohort_nodes
    from common.data.load import load_sequence_data
    from common.data.partition import partition_users

    return partition_users(load_sequence_data(config.data), config.federation, config.train.seed).num_clients


def simulate(
    run_config: dict[str, Any],
    num_supernodes: int,
    *,
    cpus_per_client: float = 1.0,
    num_cpus: int | None = None,
    verbose: bool = False,
    client_app_attr: str = "client.app:app",
    ray_address: str | None = None,
    backend: str = "ray",
) -> None:
    """Run `run_config` on `num_supernodes` simulated SuperNodes: on a private Ray instance, or as one
    Ray job on the running Ray at `ray_address` (host:port). A job's workers are started by that
    Ray's raylet, not by this process, so they get this process's FEDSEQREC_* and FLWR_* settings
    (e.g. the preprocessing cache) through the job's runtime environment.

    `backend = "in-process"`: the same engine with the ClientApp called in this process, one message
    at a time, and no Ray (`fedseqrec.launch.in_process`): for small runs, where starting Ray costs
    more than the run."""
    if backend not in BACKENDS:
        raise ValueError(f"simulate: backend {backend!r} is not one of {sorted(BACKENDS)}")
    if backend == "in-process" and ray_address:
        raise ValueError("simulate: ray_address joins a Ray cluster; the in-process backend starts no Ray")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from common.config import RunConfig
    from fedseqrec.launch.in_process import in_process_backend

    RunConfig.from_flat(run_config)  # fail fast, before Ray starts
    fused = get_fused_config_from_dir(PROJECT_DIR, run_config)
    run = Run.create_empty(run_id=1)
    run.override_config = dict(run_config)
    run.federation_id = NOOP_FEDERATION_ID
    run.primary_task_id = 1
    # Messages are stamped with the sender's task identity; flwr-simulation sets it the same way.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    # address "local": a private Ray instance, never a cluster a `ray start` on this machine left in /tmp/ray
    init_args = {"address": "local", "num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False}
    if ray_address:
        _join_ray(ray_address, verbose)  # Flower's backend then finds Ray initialised and leaves it be
    init_args["log_to_driver"] = verbose
    engine = in_process_backend() if backend == "in-process" else contextlib.nullcontext()
    with engine:
        result = _run_simulation(
            num_supernodes=num_supernodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app_attr="server.app:app",
            client_app_attr=client_app_attr,
            backend_name="ray",
            backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}, "init_args": init_args},
            app_dir=str(PROJECT_DIR),
            run=run,
            server_app_context=context,
            is_app=True,
            verbose_logging=verbose,
        )
    if not getattr(result, "success", True):
        raise RuntimeError("simulation failed; see the log above")


def _join_ray(address: str, verbose: bool) -> None:
    """Connect to the Ray at `address` as a new job whose workers get what Flower's own `ray.init`
    gives them (this process's sys.path as PYTHONPATH) and this process's FEDSEQREC_* and FLWR_*
    settings: they are started by that Ray's raylet, so they do not inherit this environment."""
    import sys

    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("FEDSEQREC_", "FLWR_"))}
    env["PYTHONPATH"] = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose, logging_level="ERROR")
