"""Privacy audits: accounting against golden values, membership inference, the one-run epsilon
lower bound, update leakage, the message whitelist, and `fedseqrec audit` on a real simulated run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SIM_CONFIG, _run

pytestmark = pytest.mark.usefixtures("cache_env")


def test_fedseqrec_audit_on_a_real_dp_run_with_canaries_and_recorded_messages(cache, tmp_path, capsys):
    from fedseqrec.cli import main

    out = tmp_path / "run"
    _run(
        {
            **SIM_CONFIG,
            "num-server-rounds": 2,
            "holdout-fraction": 0.25,
            "canaries": 8,
            "canary-length": 12,
            "audit-messages": True,
            "dp-mode": "server",
            "noise-multiplier": 0.5,
            "out-dir": str(out),
        },
        cache,
    )
    assert main(["audit", str(out), "--strict", "--users", "40", "--leakage-users", "3"]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["failures"] == []
    replayed = report["accounting"]["epsilon"]["replayed_run_accountant"]
    assert replayed == pytest.approx(report["claimed_epsilon"], rel=1e-6)
    assert report["accounting"]["epsilon"]["independent_lower_bound"] <= report["claimed_epsilon"]
    assert report["membership"]["members"] == 40 and report["membership"]["nonmembers"] == 30
    assert report["canaries"]["canaries"] == 8 and report["canaries"]["epsilon_lower_bound"] < report["claimed_epsilon"]
    messages = report["messages"]
    assert messages["by_type"].get("train", 0) == 8 and messages["failures"] == []
    for name in ("audit.md", "roc.png", "canary-scores.png"):
        assert (out / name).exists(), name
    for attack in report["membership"]["attacks"].values():  # the figure the pass/fail rests on
        assert 0.0 <= attack["epsilon_lower_bound"]["epsilon"] <= report["claimed_epsilon"]
    assert "Epsilon each attack proves" in (out / "audit.md").read_text()
    printed = capsys.readouterr().out
    assert "membership AUC" in printed and "membership epsilon >= (95% over both attacks)" in printed
