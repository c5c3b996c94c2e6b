"""Federation: aggregation against a numpy oracle, partitions, and real simulated runs.

The simulation tests run the real ServerApp/ClientApp on Flower's simulation engine in a child
process (so a test can SIGKILL it mid-run and resume).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.ranking import evaluate, model_scores
from common.model.checkpoint import load_model
from common.training.step import model_for
from tests.conftest import SIM_CONFIG, _kill_after_round, _run, assert_each_record_once


def _arrays(path: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(path)
    return model.arrays()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("uninterrupted")
    # on Ray, as `flwr run` simulates; the other simulated runs of the suite call the ClientApp in
    # their own process (conftest._start), and the resume below ends with this run's model
    log = _run({**SIM_CONFIG, "out-dir": str(out)}, cache, backend="ray")
    return out, log


def test_simulated_federation_improves_validation_ndcg(finished_run, cache, monkeypatch):
    out, log = finished_run
    assert_each_record_once(log)
    monkeypatch.setenv("FEDSEQREC_CACHE", str(cache))
    config = RunConfig.from_flat(SIM_CONFIG)
    data = load_sequence_data(config.data)
    initial = model_for(config.model, config.data, data.num_items, seed=config.train.seed)
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
