"""Continual learning: a run that starts from a previous run's model (`init-model`)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import COHORT, _run

pytestmark = pytest.mark.usefixtures("cache_env")


def test_continued_run_starts_ahead_of_scratch_on_a_grown_catalogue(cache, tmp_path):
    """Old run on a smaller catalogue (rare items filtered), then one round on the grown catalogue
    from its model, against one round from scratch."""
    old, grown, scratch = tmp_path / "old", tmp_path / "grown", tmp_path / "scratch"
    base = {**COHORT, "eval-every-rounds": 1}
    _run({**base, "min-item-count": 95, "num-server-rounds": 8, "out-dir": str(old)}, cache, num_supernodes=2)
    one_round = {**base, "num-server-rounds": 1}
    out = _run({**one_round, "init-model": str(old / "model.pt"), "out-dir": str(grown)}, cache, num_supernodes=2)
    _run({**one_round, "out-dir": str(scratch)}, cache, num_supernodes=2)
    assert "starting from" in out
    summary = json.loads((grown / "summary.json").read_text())
    old_items = json.loads((old / "summary.json").read_text())["num_items"]
    report = summary["init_model"]
    assert report["items_kept"] == old_items and report["items_dropped"] == 0
    assert report["items_new"] == summary["num_items"] - old_items > 0
    from_scratch = json.loads((scratch / "summary.json").read_text())
    assert summary["validation"]["ndcg@10"] > from_scratch["validation"]["ndcg@10"] + 0.02
