"""Ctrl-C stops a command: every process it started ends, the last checkpoint stays, one line says
where the run stopped and which command resumes it, and that command resumes to the same result.

Each command runs in its own process group (start_new_session) and gets SIGINT the way a terminal
delivers Ctrl-C: to the whole group. A thread records every descendant while it runs.
"""

from __future__ import annotations

import json
import os
import re

from tests.e2e.test_stop import BIN, Command, _partial_files, _rows, _wait_for


def test_ctrl_c_stops_training_and_reports_the_best_epoch(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache")}
    train = Command(
        [
            str(BIN / "fedseqrec"),
            "train",
            "--data",
            "synthetic",
            "--out",
            str(out),
            "--epochs",
            "500",
            "--patience",
            "500",
            "--max-len",
            "10",
            "--emb-dim",
            "8",
            "--synthetic-users",
            "60",
            "--quiet",
        ],
        tmp_path,
        env,
        "train",
    )
    try:
        _wait_for(lambda: len(_rows(out)) >= 2, 120, "second epoch", train)
        train.interrupt()
        assert train.wait(120) == 130, train.output()
        stdout, stderr = train.output()
        assert stdout == ""  # no summary: the one line says what was kept
        found = re.fullmatch(
            r"fedseqrec: training stopped in epoch (\d+)/500; reported the best epoch \((\d+), "
            r"test ndcg@10 [0-9.]+\) in (\S+) \(metrics.json, model.pt\)",
            stderr.strip().splitlines()[-1],
        )
        assert found, stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["interrupted"] is True
        assert (metrics["epochs_run"], metrics["best_epoch"]) == (int(found[1]), int(found[2]))
        assert found[3] == str(out) and (out / "model.pt").exists() and _partial_files(out) == []
    finally:
        train.kill_all()
