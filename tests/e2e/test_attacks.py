"""Simulated dropouts and attackers (client/fault_injection.py), and a run that survives them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SIM_CONFIG, _run

pytestmark = pytest.mark.usefixtures("cache_env")


def test_a_run_with_dropouts_and_attackers_keeps_a_finite_model(cache, tmp_path):
    out = tmp_path / "faults"
    _run(
        {
            **SIM_CONFIG,
            "sim-dropout": 0.3,
            "sim-attack": "random",
            "sim-attackers": 0.2,
            "sim-attack-scale": 1e4,
            "max-update-norm": 50.0,
            "out-dir": str(out),
        },
        cache,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(r["failed"] for r in rows) > 0 and summary["invalid_replies"] > 0  # dropped out; attacks refused
    assert np.isfinite(summary["test"]["ndcg@10"]) and summary["test"]["ndcg@10"] > 0
