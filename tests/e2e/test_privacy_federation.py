"""DP runs end to end on the simulation engine: reports, budgets, ledgers on disk."""

from __future__ import annotations

import json

import pytest

from common.privacy.ledger import PrivacyLedger
from common.privacy.server_accounting import dpfedavg_epsilon
from tests.conftest import SIM_CONFIG, _run, assert_each_record_once


def test_server_side_dp_run_reports_epsilon_and_stops_at_budget(cache, tmp_path):
    out = tmp_path / "dp-server"
    cap = dpfedavg_epsilon(noise_multiplier=0.8, num_sampled=30, population=120, rounds=3, delta=1 / 120) + 1e-6
    log = _run(
        {
            **SIM_CONFIG,
            "dp-mode": "server",
            "partition": "user",
            "clients-per-round": 30,
            "num-server-rounds": 6,
            "noise-multiplier": 0.8,
            "clipping-norm": 1.0,
            "max-epsilon": cap,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=120,
    )
    assert_each_record_once(log)
    report = json.loads((out / "privacy.json").read_text())
    assert report["rounds"] == 3 and report["unit_of_privacy"].startswith("client")
    assert report["delta"] == pytest.approx(1 / 120)
    eps = [r["epsilon"] for r in report["epsilon_by_round"]]
    assert eps == sorted(eps) and eps[-1] <= cap
    assert eps[-1] == pytest.approx(cap, rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert "max-epsilon" in summary["stopped_early"]
    for name in ("privacy.md", "epsilon.png"):
        assert (out / name).exists()


def test_client_side_dp_run_keeps_ledgers_that_compose_over_rounds(cache, tmp_path):
    out = tmp_path / "dp-client"
    log = _run(
        {
            **SIM_CONFIG,
            "dp-mode": "client",
            "train-windows": "last",
            "num-server-rounds": 3,
            "target-epsilon": 8.0,  # each client calibrates its own noise: privacy.json says so in words
            "out-dir": str(out),
        },
        cache,
    )
    assert_each_record_once(log)
    report = json.loads((out / "privacy.json").read_text())
    assert report["target_epsilon"] == 8.0 and isinstance(report["noise_multiplier"], str)
    eps = [r["epsilon"] for r in report["epsilon_by_round"]]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    assert report["unit_of_privacy"].startswith("user")
    ledgers = sorted((out / "client-state").glob("client-*/privacy_ledger.json"))
    assert len(ledgers) == 4
    worst = max(PrivacyLedger.load(p, "rdp").epsilon(report["delta"]) for p in ledgers)
    assert worst == pytest.approx(eps[-1])  # the report's figure is recomputable from the ledgers
    assert report["per_client_epsilon"]["max"] == pytest.approx(eps[-1])
    # and `fedseqrec audit` reads the run back: the ledgers recomputed by three accountants, no failure
    from common.audit.report import compute_audit

    audit = compute_audit(out, users=20, leakage_users=2)
    assert audit["failures"] == [], audit["failures"]
    assert len(audit["accounting"]["clients"]) == 4
