"""Crash drills on a loopback deployment of one-user devices: kill a process, recover, compare.

Shared by `tests/e2e/test_loopback_devices.py` and `simulations/benchmarks/robustness/bench_crashes.py`. A drill's
devices
hold one user each and train without dropout, so the model an uninterrupted run must end with can be
recomputed in this process from the devices' own files (`expected_model`): FedAvg over every user,
round after round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import psutil
import torch

from common.config import RunConfig
from common.recipes import cohort_training

# A drill's model and federation: small, and without dropout, so that the model an uninterrupted run
# ends with is recomputed exactly (`expected_model`).
DRILL_MODEL = {
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
    "seed": 11,
}

# Settings a drill's run needs on top of the model's: every device trains every round, and a round a
# dead device misses is sent again, to the same users, until the device is back.
RETRYING = {
    "min-replies": 0,  # set to the number of devices by `retrying`
    "round-deadline": 40.0,
    "round-retries": 6,
    "retry-wait": 5.0,
}


# A drill's deployment looks for work every 0.2 s and its devices declare a 10 s heartbeat (Flower:
# 3 s and 30 s): a dead device is seen offline, and its restart let in, after 20 s, not 60 s.
DRILL_TIMINGS = {"poll_interval": 0.2, "heartbeat_interval": 10.0}


def retrying(devices: int, rounds: int) -> dict:
    return {
        **RETRYING,
        "min-replies": devices,
        "clients-per-round": devices,
        "num-server-rounds": rounds,
        "eval-every-rounds": rounds,  # one evaluation, at the end: fewer ClientApp processes per round
    }


def expected_model(run_config: Mapping, partition: Path, rounds: int) -> dict[str, torch.Tensor]:
    """FedAvg over every device's users for `rounds` rounds, from the devices' files in `partition`."""
    from client.local_data import load_local_data
    from common.training.cohort_clients import train_chunks
    from common.training.step import model_for

    config = RunConfig.from_flat(dict(run_config), where="crash drill")
    catalogue = Path(partition) / "catalogue.json"
    arrays = model_for(
        config.model, config.data, len(json.loads(catalogue.read_text())) - 1, seed=config.train.seed
    ).arrays()
    files = sorted(Path(partition).glob("node-*.csv"))
    for server_round in range(1, rounds + 1):
        total, users = {k: torch.zeros_like(v) for k, v in arrays.items()}, 0
        for node in files:
            node_config = {"data-path": str(node), "catalogue-path": str(catalogue), "client-id": 0}
            local = load_local_data(config, node_config)
            result = train_chunks(
                cohort_training(config, local.num_items), local, [(0, np.arange(local.num_users))], arrays, server_round
            )
            count = result.metrics["users"]
            for k in total:
                total[k] += (result.arrays[k] - arrays[k]) * count
            users += count
        arrays = {k: v + total[k] / users for k, v in arrays.items()}
    return arrays


def checkpoint_round(out: Path) -> int:
    path = Path(out) / "checkpoint.pt"
    if not path.exists():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["round"])
    except Exception:  # mid-replace by the ServerApp: look again
        return 0


def final_arrays(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["arrays"]


def wait_for_round(deployment, proc, out: Path, round_: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while checkpoint_round(out) < round_:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before round {round_}; see {deployment.logs}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of round {round_} in {timeout} s")
        time.sleep(0.2)


def node_log_size(deployment, client_id: int) -> int:
    """Where the device's SuperNode log ends now: `wait_for_training` reads what comes after."""
    log = deployment.logs / f"supernode-{client_id}.log"
    return log.stat().st_size if log.exists() else 0


def is_clientapp(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE and "flwr-clientapp" in " ".join(proc.cmdline()[:2])
    except psutil.Error:  # gone (or a zombie) between listing and looking
        return False


def wait_for_training(deployment, proc, client_id: int, log_from: int, timeout: float = 600) -> None:
    """Until the device is mid-training: since `log_from` (its SuperNode log's size before the run was
    submitted) the SuperNode has answered this run's identity query, received a train message and not
    yet sent its reply, and a ClientApp runs under it. (Counting ClientApp processes instead missed the
    identity query's whenever it ended before the run logged the identification, and then killed the
    device in the round's evaluation.)"""
    deadline = time.monotonic() + timeout
    log = deployment.logs / f"supernode-{client_id}.log"
    supernode = psutil.Process(deployment.tracker.started[f"supernode-{client_id}"].pid)
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before device {client_id} trained; see {deployment.logs}")
        if time.monotonic() > deadline:
            raise AssertionError(f"device {client_id} did not start training in {timeout} s")
        with open(log, "rb") as handle:
            handle.seek(log_from)
            since = handle.read().decode(errors="replace")
        # This run's first message to the device is its identity query; a train message received after
        # it and not yet answered is this run's (the log can end with a late reply of the run before).
        query = since.find("Receiving: query message")
        train = since.find("Receiving: train message", query) if query >= 0 else -1
        if train >= 0 and "Sending: train message" not in since[train:]:
            if any(is_clientapp(c) for c in supernode.children(recursive=True)):
                return
        time.sleep(0.1)
