"""The DP-round benchmark runs as the cohort engine would, and its two DP sums agree (issue 32)."""

from __future__ import annotations

import pytest

from simulations.benchmarks.privacy.bench_dp_round import WAYS, bench_model

SMALL = {
    "data": "synthetic",
    "synthetic-users": 40,
    "synthetic-items": 30,
    "cohort-chunk": 8,
    "emb-dim": 8,
    "max-len": 10,
}


@pytest.mark.parametrize("model", ["sasrec", "gru"])
def test_one_round_of_each_way_and_equal_dp_sums(model):
    row = bench_model(model, reps=1, users=20, seed=0, ways=list(WAYS), overrides=SMALL)
    assert row["users"] == 20 and row["reps"] == 1
    for way in WAYS:
        assert row[f"{way}_cpu_median_s"] > 0
    assert row["dp_sums_max_relative_difference_no_dropout"] < 1e-4
