"""Real-process deployment on loopback: TLS SuperLink with SuperNode authentication, two
SuperNodes with their own data files, `flwr run`, two rounds; every process stopped afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.synthetic import synthetic_interactions
from common.evaluation.ranking import evaluate, model_scores
from common.model.checkpoint import load_model
from common.training.step import model_for
from fedseqrec.deployment_data import write_node_files
from fedseqrec.launch.credentials import make_node_keys
from fedseqrec.launch.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition
from fedseqrec.launch.processes import VENV_BIN, free_port
from tests.conftest import assert_each_record_once

RUN = {
    "model": "sasrec",
    "emb-dim": 16,
    "hidden-dim": 32,
    "num-layers": 1,
    "max-len": 20,
    "dropout": 0.0,
    "batch-size": 32,
    "local-epochs": 2,
    "local-lr": 0.01,
    "strategy": "fedavg",
    "num-server-rounds": 2,
    "clients-per-round": 2,
    "eval-every-rounds": 1,
    "num-threads": 1,
    "seed": 7,
}


def test_loopback_deployment_with_tls_and_node_auth(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))  # inherited by every process
    data_file = tmp_path / "interactions.csv"
    synthetic_interactions(120, 60, seed=0).to_csv(data_file, index=False)
    run_config = {**RUN, "data": str(data_file), "out-dir": str(tmp_path / "run")}
    config = RunConfig.from_flat(run_config, where="test")
    write_node_files(config, tmp_path / "partition", 2)
    nodes = nodes_from_partition(tmp_path / "partition", tmp_path / "work")
    assert [n.client_id for n in nodes] == [0, 1]
    # The server holds no interactions: only the item catalogue; clients evaluate their own users.
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
            assert len(deployment.online_nodes()) == 2
            # A SuperNode whose key was never registered must not join (it gives up after 1 retry).
            rogue = make_node_keys(tmp_path / "work" / "keys", "rogue")
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
                nodes[0].node_config(),
            ]
            deployment.tracker.start(
                "rogue",
                command,
                deployment.logs / "rogue.log",
                deployment._env(tmp_path / "work" / "rogue-home"),
                deployment.work,
            )
            try:
                deployment.run(run_config, timeout=1200)
            except DeploymentError as exc:
                pytest.fail(f"{exc}\n{_tail(deployment.logs)}")
            status = deployment.run_info(deployment.run_id)["status"]
    finally:  # checked on failure too (a failure here chains to the original error)
        started, alive = deployment.pids(), deployment.alive()
        assert alive == [], f"processes still alive after stop: {alive} of {started}"
    assert len(started) >= 3  # SuperLink, 2 SuperNodes (+ flwr run, SuperExecs, ServerApp, ClientApps)
    assert status == "finished:completed"

    logs = deployment.logs
    superlink_log = (logs / "superlink.log").read_text(errors="replace")
    assert "--ssl-certfile" in superlink_log and "--enable-supernode-auth" in superlink_log
    assert "Uvicorn running on https://" in superlink_log  # TLS on every API
    assert "No SuperNode found with the given public key" in superlink_log  # the rogue node was refused
    assert (tmp_path / "work" / "flwr-home" / "cli" / "config.toml").read_text().count("root-certificates") == 1

    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["failed_clients"] == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["sampled"] == 2 and row["replied"] == 2 for row in history)  # the rogue node never counted

    # The global model moved away from the initial one (same seed -> same initial weights) ...
    assert not (tmp_path / "not-on-the-server.csv").exists()
    assert history[-1]["validation"]["users"] == 120  # every device's users, ranked on the devices
    data = load_sequence_data(config.data)
    initial = model_for(config.model, config.data, data.num_items, seed=config.train.seed)
    trained, item_ids, _ = load_model(out / "model.pt")
    np.testing.assert_array_equal(item_ids, data.item_ids)
    init_arrays, final_arrays = initial.arrays(), trained.arrays()
    assert init_arrays.keys() == final_arrays.keys()
    assert any(not torch.equal(init_arrays[k], final_arrays[k]) for k in init_arrays)
    # ... and ranks better on validation than it did before training.
    initial.eval()
    k = config.train.top_k
    with torch.no_grad():
        before = evaluate(
            model_scores(initial),
            data,
            "validation",
            top_k=k,
            mask_seen=config.train.mask_seen,
            batch_size=config.train.eval_batch_size,
        )[f"ndcg@{k}"]
    after = history[-1]["validation"][f"ndcg@{k}"]
    assert after > before, (before, after)

    for name in ("supernode-0", "supernode-1", "flwr-run"):
        assert (logs / f"{name}.log").stat().st_size > 0
    assert_each_record_once((logs / "flwr-run.log").read_text(errors="replace"))


def _tail(logs: Path, lines: int = 40) -> str:
    out = []
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"==> {log.name} <==\n" + "\n".join(text))
    return "\n".join(out)
