"""User-level DP on the cohort engine beyond DP-FedAvg: DP-FTRL (tree aggregation, participation
cap) and adaptive clipping with its cost in the accounting."""

from __future__ import annotations

import json

import pytest

from tests.conftest import COHORT, _run

pytestmark = pytest.mark.usefixtures("cache_env")


def test_dp_ftrl_on_the_cohort_engine_end_to_end(cache, tmp_path):
    from common.privacy.server_accounting import dpftrl_epsilon
    from fedseqrec.cli import main

    out = tmp_path / "ftrl"
    _run(
        {
            **COHORT,
            "dp-mode": "server",
            "server-mechanism": "dp-ftrl",
            "noise-multiplier": 2.0,
            "clipping-norm": 0.5,
            "num-server-rounds": 5,
            "clients-per-round": 50,
            "max-participations": 1,
            "holdout-fraction": 0.2,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=2,
    )
    report = json.loads((out / "privacy.json").read_text())
    assert report["adjacency"] == "replace-with-zero" and report["server_mechanism"] == "dp-ftrl"
    ftrl = report["dp_ftrl"]
    assert ftrl["max_participations"] == 1 and ftrl["trees"][0] == [min(5, ftrl["rounds_in_tree"])]
    assert report["epsilon"] == pytest.approx(dpftrl_epsilon(2.0, ftrl["trees"], delta=report["delta"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = sum(r["replied"] for r in rows)
    assert trained == report["clients"]  # one pass (cap 1): every user exactly once
    assert main(["audit", str(out), "--strict", "--users", "20", "--leakage-users", "2"]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert 0 < audit["accounting"]["epsilon"]["independent_lower_bound"] <= report["epsilon"]


def test_adaptive_clipping_on_the_cohort_engine_end_to_end(cache, tmp_path):
    out = tmp_path / "adaptive"
    _run(
        {
            **COHORT,
            "dp-mode": "server",
            "user-sampling": "poisson",
            "adaptive-clipping": True,
            "noise-multiplier": 1.0,
            "clipping-norm": 5.0,
            "clip-lr": 0.5,
            "num-server-rounds": 4,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=2,
    )
    report = json.loads((out / "privacy.json").read_text())
    detail = report["adaptive_clipping_detail"]
    assert detail["update_noise_multiplier"] > report["noise_multiplier"]
    assert detail["final_clipping_norm"] != pytest.approx(5.0)  # C moved with the noisy unclipped count
