"""`fedseqrec tune`: a tiny study runs, resumes, plots and reports its best trial; bad search spaces
are one-line errors; the centralized trainer's hooks the tuner relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from common.config import RunConfig
from fedseqrec.centralized import train_centralized
from fedseqrec.cli import main
from fedseqrec.search_space import parse_search_space

pytestmark = pytest.mark.usefixtures("cache_env")

ROOT = Path(__file__).resolve().parents[2]
BASE = """
data = "synthetic"
synthetic-users = 60
synthetic-items = 30
model = "sasrec"
max-len = 10
emb-dim = 16
num-layers = 1
epochs = 3
batch-size = 32
eval-batch-size = 128
"""
SPACE = """
[search]
lr = { low = 1e-3, high = 3e-2, log = true }
dropout = { low = 0.0, high = 0.4, step = 0.1 }
augment = { choices = ["", "crop,mask"] }
"""


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="fedseqrec", storage=f"sqlite:///{out / 'study.db'}")


def test_a_study_runs_resumes_plots_and_reports_its_best_trial(tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    out = tmp_path / "study"
    args = ["tune", "--config", str(config), "--out", str(out), "--no-pruning"]
    assert main([*args, "--trials", "2"]) == 0
    first = json.loads((out / "trials.json").read_text())
    assert first["trials"] == first["complete"] == 2
    assert (out / "trials.png").stat().st_size > 0
    for row in first["rows"]:  # each trial ran the base config with its own values, in its own folder
        flat = json.loads((out / row["run_dir"] / "config.json").read_text())
        assert {k: flat[k] for k in row["params"]} == row["params"] and flat["emb-dim"] == 16
        assert len(row["intermediate"]) == 3  # validation reported every epoch
        assert json.loads((out / row["run_dir"] / "metrics.json").read_text())["test"] is None  # no test per trial

    assert main([*args, "--trials", "1"]) == 0  # the same command continues the same study
    again = json.loads((out / "trials.json").read_text())
    assert again["trials"] == len(_study(out).trials) == 3
    assert [r["params"] for r in again["rows"][:2]] == [r["params"] for r in first["rows"]]
    values = [r["value"] for r in again["rows"]]
    best = again["best"]
    assert best["value"] == max(values) and values[best["number"]] == best["value"]
    stored = json.loads((out / "best.json").read_text())  # the best trial's test figures, computed once
    assert stored["trial"] == best["number"] and stored["test"] == best["test"]
    assert 0 <= best["test"]["ndcg@10"] <= best["test"]["hr@10"] <= 1
    printed = capsys.readouterr().out
    assert "tune: trial 2 (1/1) complete" in printed and f"tune: best trial {best['number']}" in printed


def test_a_resumed_study_reruns_a_trial_its_killed_tuner_left_running(tmp_path):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    out = tmp_path / "study"
    args = ["tune", "--config", str(config), "--out", str(out), "--no-pruning", "--trials", "1"]
    assert main(args) == 0
    dead = _study(out).ask()  # what a SIGKILLed tuner leaves behind: a trial forever RUNNING
    dead.suggest_float("lr", 1e-3, 3e-2, log=True)
    assert main(args) == 0
    rows = json.loads((out / "trials.json").read_text())["rows"]
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert rows[2]["retry_of"] == 1 and rows[2]["params"]["lr"] == rows[1]["params"]["lr"]


def test_a_study_cannot_be_continued_with_another_space(tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    out = tmp_path / "study"
    assert main(["tune", "--config", str(config), "--out", str(out), "--trials", "1"]) == 0
    config.write_text(BASE + SPACE.replace("high = 0.4", "high = 0.3"))
    assert main(["tune", "--config", str(config), "--out", str(out), "--trials", "1"]) == 2
    assert "another mode, base config or search space" in capsys.readouterr().err
    assert len(_study(out).trials) == 1


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("", r"needs a non-empty \[search\] table"),
        ("[search]\ndropuot = { low = 0.1, high = 0.2 }", r"'dropuot' is not a run-config key.*'dropout'"),
        ("[search]\nlr = { low = 0.1, high = 0.01 }", r"low \(0.1\) must be below high"),
        ("[search]\nlr = { low = 0.0, high = 0.1, log = true }", "log range needs low > 0"),
        ("[search]\nlr = { low = 0.001, hi = 0.1 }", "unknown field"),
        ("[search]\nmodel = { low = 1, high = 2 }", "str key: give choices"),
        ("[search]\nnum-layers = { low = 1, high = 2.5 }", "whole numbers"),
        ("[search]\ndropout = { low = 0.1, high = 1.5 }", r"'dropout': value 1.5 is refused.*must be in \[0, 1\)"),
        ('[search]\nmodel = { choices = ["sasrec", "bert"] }', "value 'bert' is refused"),
        ("[search]\naugment = { choices = [] }", "non-empty list"),
        ('[search]\nout-dir = { choices = ["a"] }', "set by the tuner"),
    ],
)
def test_bad_search_spaces_are_one_line_errors(tmp_path, capsys, space, message):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + space)
    assert main(["tune", "--config", str(config), "--out", str(tmp_path / "study")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedseqrec: error: ") and error.count("\n") == 1
    assert re.search(message, error)
    assert not (tmp_path / "study").exists()  # nothing ran


def test_cli_prints_the_error_in_one_line_and_exits_2(tmp_path):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + "[search]\nlr = { low = 0.1, high = 0.01 }")
    done = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "tune", "--config", str(config), "--out", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "low (0.1) must be below high" in done.stderr
    assert "Traceback" not in done.stderr


def test_centralized_trainer_hooks_for_the_tuner(tmp_path):
    config = RunConfig.from_flat(
        {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 30, "max-len": 10, "emb-dim": 16}
        | {"num-layers": 1, "epochs": 5, "patience": 5}
    )
    seen = []

    def stop_at_two(epoch: int, value: float) -> bool:
        seen.append((epoch, value))
        return epoch == 2

    metrics = train_centralized(config, tmp_path, show_progress=False, report_test=False, on_validation=stop_at_two)
    assert [e for e, _ in seen] == [1, 2] and metrics["epochs_run"] == 2
    assert metrics["stopped_by"] == "on_validation" and metrics["test"] is None
    assert metrics["validation"]["ndcg@10"] == pytest.approx(max(v for _, v in seen))


@pytest.mark.parametrize(
    "path", sorted((ROOT / "simulations" / "configs" / "tune").glob("*.toml")), ids=lambda p: p.name
)
def test_shipped_tuning_configs_are_valid(path):
    import tomllib

    flat = tomllib.loads(path.read_text())
    table = flat.pop("search")
    RunConfig.from_flat(flat, where=str(path))
    assert parse_search_space(table, flat, str(path))


def test_timeout_stops_starting_trials(tmp_path):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    out = tmp_path / "study"
    assert main(["tune", "--config", str(config), "--out", str(out), "--trials", "5", "--timeout", "0.001"]) == 0
    assert json.loads((out / "trials.json").read_text())["trials"] == 1  # the first trial runs, no other starts


def test_a_tuning_file_holds_no_other_table(tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE + "\n[extra]\nx = 1\n")
    assert main(["tune", "--config", str(config), "--out", str(tmp_path / "study")]) == 2
    assert "[extra] is a table" in capsys.readouterr().err


def test_round_watcher_asks_once_and_withdraws_a_request_the_run_outlived(tmp_path):
    from common.stop_request import STOP_FILE, request_stop, take_stop_request
    from fedseqrec.tune import RoundWatcher

    request_stop(tmp_path, "  because  ")
    assert take_stop_request(tmp_path) == "because" and take_stop_request(tmp_path) is None
    (tmp_path / STOP_FILE).write_bytes(b"\xff\xfe")  # not text: still a request, never a crash
    assert take_stop_request(tmp_path) == "\ufffd\ufffd" and not (tmp_path / STOP_FILE).exists()
    (tmp_path / STOP_FILE).write_text("")
    assert take_stop_request(tmp_path) == "no reason given"
    rows = [{"round": 1}, {"round": 2, "validation": {"ndcg@10": 0.1}}, {"round": 4, "validation": {"ndcg@10": 0.2}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seen = []
    watcher = RoundWatcher(tmp_path, "ndcg@10", lambda r, v: seen.append((r, v)) or True)
    watcher.look()
    watcher.look()  # rows already reported are not reported again
    assert seen == [(2, 0.1), (4, 0.2)] and "after round 2" in (tmp_path / STOP_FILE).read_text()
    watcher.start()
    assert watcher.finish() is None and not (tmp_path / STOP_FILE).exists()  # nobody took it: withdrawn
    taken = RoundWatcher(tmp_path, "ndcg@10", lambda r, v: True)
    taken.look()
    assert take_stop_request(tmp_path) is not None  # what the ServerApp does before its next round
    taken.start()
    assert taken.finish() == 2
    broken = RoundWatcher(tmp_path, "ndcg@10", lambda r, v: 1 / 0, poll_seconds=0.01)
    broken.start()
    time.sleep(0.1)
    with pytest.raises(ZeroDivisionError):
        broken.finish()


def test_prune_after_below_one_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    args = ["tune", "--config", str(config), "--out", str(tmp_path / "s"), "--mode", "federated", "--prune-after", "0"]
    assert main(args) == 2
    assert "argument --prune-after: expected an integer in [1, 1000000], got '0'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_out_folder_that_cannot_be_made_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text(BASE + SPACE)
    (tmp_path / "file").write_text("")
    assert main(["tune", "--config", str(config), "--out", str(tmp_path / "file" / "study")]) == 2
    assert "--out" in capsys.readouterr().err
