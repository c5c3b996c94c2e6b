"""Everything a DP run releases is inside its claim (issue 29): one test per hole that was found.

1. selection: the released model is the last round's or the public cohort's choice; the round log
   holds no training statistics of protected users; an unlisted file fails `audit --strict`;
2. client DP replies carry nothing data-dependent but the noised weights (also tests/unit/test_privacy.py);
3. one user's randomness is its own: adding a user changes no other user's update;
4. devices that come and go: each round booked with what it really sampled from;
5. no checkpoint gap under DP; 6. a resume never spends past the target; 7. SecAgg+ sends only the
   weight in the clear; 8. the audit's tests hold together at 95% and both modes cross-check.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from common.privacy.releases import unlisted
from tests.conftest import ROOT, _run
from tests.unit.test_release_claim import DP_COHORT

pytestmark = pytest.mark.usefixtures("cache_env")


def test_a_dp_run_releases_its_last_round_and_audit_strict_fails_anything_unlisted(cache, tmp_path):
    out = tmp_path / "dp"
    _run({**DP_COHORT, "out-dir": str(out)}, cache)
    summary = json.loads((out / "summary.json").read_text())
    privacy = json.loads((out / "privacy.json").read_text())
    assert summary["best_round"] == summary["rounds"] == privacy["released_round"] == 4
    assert summary["selection"] == "last round"
    model = torch.load(out / "model.pt", weights_only=False)["arrays"]
    last = torch.load(out / "checkpoint.pt", weights_only=False)["arrays"]
    for key, value in last.items():
        assert torch.equal(model[key], value.to(model[key].dtype)), (
            key
        )  # the released model is the last round's, not a selection
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    allowed = {r["name"] for r in privacy["releases"]["round_log"]}
    assert all(set(row) <= allowed for row in rows)
    assert not any({"train-loss", "sampled", "replied", "validation"} & set(row) for row in rows)
    assert unlisted(out, privacy["releases"]) == []
    audit = [sys.executable, "-m", "fedseqrec.cli", "audit", str(out), "--strict", "--users", "20"]
    assert subprocess.run(audit, cwd=ROOT, capture_output=True, text=True).returncode == 0
    (out / "cohort-sizes.json").write_text("[61, 58, 60, 63]")  # a release nobody classified
    failed = subprocess.run(audit, cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "cohort-sizes.json" in (failed.stdout + failed.stderr)


def test_the_public_cohort_chooses_the_released_round_and_stays_out_of_test(cache, tmp_path):
    out = tmp_path / "public"
    _run({**DP_COHORT, "public-fraction": 0.1, "out-dir": str(out)}, cache)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("validation" in row for row in rows)  # validated on public data every round
    best = max(rows, key=lambda row: row["validation"]["ndcg@10"])
    assert summary["best_round"] == best["round"] and summary["public_users"] == 20
    assert summary["num_users"] == 180  # the DP population: the public cohort is not in it


def test_pretraining_on_the_public_cohort_is_public_and_the_report_shows_what_private_data_added(cache, tmp_path):
    out = tmp_path / "pretrained"
    _run({**DP_COHORT, "public-fraction": 0.1, "pretrain-epochs": 2, "out-dir": str(out)}, cache)
    summary = json.loads((out / "summary.json").read_text())
    privacy = json.loads((out / "privacy.json").read_text())
    pretrain = json.loads((out / "pretrain.json").read_text())
    assert pretrain["sources"]["public_cohort"]["users"] == 20 and pretrain["epochs_run"] == 2
    assert privacy["public_data"]["public_cohort"]["used_for"] == "validation and pretraining"
    public_only = summary["public_only"]
    gain = public_only["released_minus_public_ndcg"]
    assert gain["users"] == 180  # the protected users' test items, the same as the released model's
    low, high = gain["interval_95"]
    assert low <= gain["mean"] <= high
    assert 0.0 <= public_only["test"]["ndcg@10"] <= 1.0
    # the run started from the public model: round 0's weights are it, not a fresh initialisation
    public = torch.load(out / "public-model.pt", weights_only=False)["arrays"]
    fresh = torch.load(out / "model.pt", weights_only=False)["arrays"]
    assert any(not torch.equal(public[k], fresh[k]) for k in public)  # DP rounds moved it
    assert unlisted(out, privacy["releases"]) == []


def test_a_population_projection_is_labelled_in_every_report_and_books_the_projected_population(cache, tmp_path):
    real, projected = tmp_path / "real", tmp_path / "projected"
    settings = {**DP_COHORT, "num-server-rounds": 2, "noise-multiplier": 0.0, "target-epsilon": 4.0}
    _run({**settings, "out-dir": str(real)}, cache)
    _run({**settings, "simulated-population": 20_000, "out-dir": str(projected)}, cache)
    reports = [json.loads((run / "privacy.json").read_text()) for run in (real, projected)]
    assert (
        "projection" not in reports[0]
        and "projection" not in json.loads((real / "summary.json").read_text())["privacy"]
    )
    note = reports[1]["projection"]["note"]
    assert "PROJECTION" in note and reports[1]["projection"]["trained_on_users"] == 200
    assert reports[1]["clients"] == 20_000 and reports[1]["delta"] == pytest.approx(1 / 20_000)
    assert reports[1]["noise_multiplier"] < reports[0]["noise_multiplier"]  # the same epsilon, q 100x smaller
    assert note in (projected / "privacy.md").read_text()
    assert json.loads((projected / "summary.json").read_text())["privacy"]["projection"] == note
