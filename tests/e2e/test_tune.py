"""`fedseqrec tune`: a tiny study runs, resumes, plots and reports its best trial; bad search spaces
are one-line errors; the centralized trainer's hooks the tuner relies on."""

from __future__ import annotations

import json

import pytest

from common.config import RunConfig
from fedseqrec.cli import main

pytestmark = pytest.mark.usefixtures("cache_env")


def test_federated_trials_run_the_cohort_engine_in_process(tmp_path):
    from tests.conftest import COHORT

    base = {**COHORT, "num-server-rounds": 2, "eval-every-rounds": 1, "clients-per-round": 20}
    lines = [f"{k} = {json.dumps(v)}" for k, v in base.items()]
    config = tmp_path / "tune.toml"
    config.write_text("\n".join(lines) + "\n[search]\nserver-lr = { low = 0.001, high = 0.1, log = true }\n")
    out = tmp_path / "study"
    assert main(["tune", "--config", str(config), "--mode", "federated", "--out", str(out), "--trials", "2"]) == 0
    summary = json.loads((out / "trials.json").read_text())
    assert summary["complete"] == 2 and summary["mode"] == "federated"
    for row in summary["rows"]:
        run = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert row["value"] == run["validation"]["ndcg@10"]  # the objective is the run's validation figure
        assert sorted(row["intermediate"]) == ["1", "2"]  # one per evaluated round
    assert summary["best"]["test"] == json.loads((out / "best.json").read_text())["test"]


def test_a_pruned_federated_trial_stops_its_federation_before_the_next_round(tmp_path):
    """The watcher's stop request reaches the ServerApp of a real in-process federation, which ends
    the run cleanly (model, summary saying why) well before its last round."""
    from common.stop_request import STOP_FILE
    from fedseqrec.launch.simulate import num_supernodes, simulate
    from fedseqrec.tune import RoundWatcher
    from tests.conftest import COHORT

    out = tmp_path / "run"
    flat = {**COHORT, "num-server-rounds": 12, "eval-every-rounds": 1, "out-dir": str(out)}
    watcher = RoundWatcher(out, "ndcg@10", lambda r, v: r >= 1, poll_seconds=0.05)
    watcher.start()
    try:
        # in-process: the stop request is the ServerApp's (Ray's repeated starts in one process are the
        # test above's); a private Ray instance would double this test's time
        simulate(flat, num_supernodes=num_supernodes(RunConfig.from_flat(flat)), backend="in-process")
    finally:
        asked = watcher.finish()
    summary = json.loads((out / "summary.json").read_text())
    assert asked == 1 and 1 <= summary["rounds"] < 12
    assert summary["stopped_early"].startswith(f"stop requested before round {summary['rounds'] + 1}")
    assert "pruned by fedseqrec tune after round 1" in summary["stopped_early"]
    assert (out / "model.pt").exists() and not (out / STOP_FILE).exists()
