"""The cohort engine: many one-user devices at once, exactly as each device would compute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.ranking import model_scores
from tests.conftest import COHORT, _kill_after_round, _run, assert_each_record_once

pytestmark = pytest.mark.usefixtures("cache_env")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cohort_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "two-nodes"
    log = _run({**COHORT, "cohort-nodes": 2, "out-dir": str(out)}, cache, num_supernodes=2)
    (out.parent / "output.txt").write_text(log)
    return out


def test_cohort_run_learns_and_counts_users(cohort_run):
    assert_each_record_once((cohort_run.parent / "output.txt").read_text())
    rows = _rows(cohort_run)
    assert [r["sampled"] for r in rows] == [60] * 6 and all(r["replied"] == 60 for r in rows)
    assert all(r["nodes"] == 2 for r in rows)
    val = [r["validation"]["ndcg@10"] for r in rows]
    assert val[-1] > val[0] + 0.02, val


def test_fake_users_push_a_cold_item_into_the_real_users_top_10(cohort_run, cache, tmp_path):
    """sim-attack = promote on the cohort engine: 5% fake devices that the server samples like any other."""
    from common.evaluation.ranking import item_exposure
    from common.model.checkpoint import load_model

    data = load_sequence_data(RunConfig.from_flat(COHORT).data)
    target = int(np.argmin(np.bincount(data.items, minlength=data.num_items + 1)[1:])) + 1  # a cold item
    out = tmp_path / "promoted"
    attack = {"sim-attack": "promote", "sim-attackers": 0.05, "sim-target-item": target}
    _run({**COHORT, **attack, "cohort-nodes": 2, "out-dir": str(out)}, cache, num_supernodes=2)
    exposure = {}
    for name, run in (("clean", cohort_run), ("promoted", out)):
        model, _, _ = load_model(run / "model.pt")
        exposure[name] = item_exposure(model_scores(model.eval()), data, target)
    assert sum(r.get("fake-users", 0) for r in _rows(out)) > 0
    assert exposure["promoted"] > max(0.5, 2 * exposure["clean"])


def test_cohort_run_does_not_depend_on_the_number_of_nodes(cache, tmp_path):
    # FedAvg: FedAdam with a tiny tau would blow the float rounding of a different summation order
    # up to +-server-lr on coordinates whose update is ~0, hiding what this test is about.
    config = {**COHORT, "strategy": "fedavg", "local-lr": 0.5, "dropout": 0.2, "num-server-rounds": 3}
    runs = []
    for nodes in (2, 3):
        runs.append(tmp_path / f"{nodes}-nodes")
        _run({**config, "cohort-nodes": nodes, "out-dir": str(runs[-1])}, cache, num_supernodes=nodes)
    a, b = (torch.load(d / "checkpoint.pt", weights_only=False)["arrays"] for d in runs)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_federated_evaluation_gives_the_server_side_figures(cohort_run, cache, tmp_path):
    out = tmp_path / "federated-eval"
    _run({**COHORT, "cohort-nodes": 2, "federated-evaluation": True, "out-dir": str(out)}, cache, num_supernodes=2)
    for ours, theirs in zip(_rows(out), _rows(cohort_run)):
        assert ours["validation"]["ndcg@10"] == pytest.approx(theirs["validation"]["ndcg@10"], abs=1e-6)
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (out, cohort_run))
    # the release's test and validation, asked of each node in one message
    for split in ("test", "validation"):
        assert summary[split]["ndcg@10"] == pytest.approx(reference[split]["ndcg@10"], abs=1e-6), split
        assert summary[split]["hr@10"] == pytest.approx(reference[split]["hr@10"], abs=1e-6), split
    # the server knows no user under federated evaluation; with its own copy it reports groups and
    # the list metrics of a cross-device run
    assert summary["metrics_by_group"] is None and "activity" in reference["metrics_by_group"]["attributes"]
    assert {"ild@10", "gini@10", "long-tail@10"} <= set(reference["test"])


def test_poisson_sampling_draws_about_q_n_users(cache, tmp_path):
    out = tmp_path / "poisson"
    _run({**COHORT, "user-sampling": "poisson", "num-server-rounds": 3, "out-dir": str(out)}, cache, num_supernodes=2)
    sampled = [r["sampled"] for r in _rows(out)]
    assert len(set(sampled)) > 1 and all(30 < s < 90 for s in sampled)  # Binomial(200, 0.3): mean 60, sd 6.5


def test_killed_cohort_run_resumes_to_the_uninterrupted_result(cache, tmp_path):
    config = {**COHORT, "num-server-rounds": 16, "eval-every-rounds": 5}  # the kill lands ~13 rounds early
    reference = tmp_path / "reference"
    _run({**config, "out-dir": str(reference)}, cache, num_supernodes=2)
    out = tmp_path / "killed"
    _kill_after_round({**config, "out-dir": str(out)}, cache, out, 3, num_supernodes=2)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] < 16
    assert "resuming" in _run({**config, "out-dir": str(out)}, cache, num_supernodes=2)
    a, b = (torch.load(d / "checkpoint.pt", weights_only=False)["arrays"] for d in (reference, out))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_server_with_only_the_item_catalogue_runs_with_federated_evaluation(cache, tmp_path):
    from common.errors import ConfigError

    config = RunConfig.from_flat(COHORT)
    data = load_sequence_data(config.data)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(data.item_ids.tolist()))
    with pytest.raises(ConfigError, match="federated-evaluation"):
        RunConfig.from_flat({**COHORT, "catalogue-path": str(catalogue)})
    runs = {}
    for name, extra in (("full", {}), ("catalogue", {"catalogue-path": str(catalogue)})):
        runs[name] = tmp_path / name
        _run(
            {**COHORT, "num-server-rounds": 2, "federated-evaluation": True, "out-dir": str(runs[name]), **extra},
            cache,
            num_supernodes=2,
        )
    summary, reference = (json.loads((runs[n] / "summary.json").read_text()) for n in ("catalogue", "full"))
    assert summary["num_items"] == data.num_items and summary["num_users"] == 200
    assert summary["test"] == pytest.approx(reference["test"], abs=1e-6)
    from common.model.checkpoint import load_model

    _, items, _ = load_model(runs["catalogue"] / "model.pt")
    assert np.array_equal(items, data.item_ids)


def test_user_level_dp_fedavg_on_the_cohort_engine_end_to_end(cache, tmp_path):
    from common.privacy.server_accounting import dpfedavg_epsilon
    from fedseqrec.cli import main

    out = tmp_path / "dp-cohort"
    log = _run(
        {
            **COHORT,
            "dp-mode": "server",
            "user-sampling": "poisson",
            "noise-multiplier": 1.0,
            "clipping-norm": 0.5,
            "num-server-rounds": 3,
            "holdout-fraction": 0.2,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=2,
    )
    assert_each_record_once(log)  # absl's first log call (Poisson accounting) once added a root handler
    report = json.loads((out / "privacy.json").read_text())
    assert report["adjacency"] == "add/remove" and report["sampling_kind"] == "poisson"
    assert report["noise_randomness"] == "secret" and "cohort engine" in report["mechanism"]
    population = report["clients"]
    assert report["epsilon"] == pytest.approx(
        dpfedavg_epsilon(
            noise_multiplier=1.0,
            num_sampled=60,
            population=population,
            rounds=3,
            delta=report["delta"],
            sampling="poisson",
        )
    )
    assert main(["audit", str(out), "--strict", "--users", "20", "--leakage-users", "2"]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert 0 < audit["accounting"]["epsilon"]["independent_lower_bound"] <= report["epsilon"]
