"""The `fedseqrec` command line: a training run, and one readable line with exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest

from common.config import RunConfig
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError
from fedseqrec.cli import main

FAST = [
    "--quiet",
    "--model",
    "sasrec",
    "--max-len",
    "8",
    "--emb-dim",
    "8",
    "--num-layers",
    "1",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--eval-batch-size",
    "64",
]


@pytest.fixture
def csv(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "interactions.csv"
    synthetic_interactions(30, 15, mean_length=8, seed=2).to_csv(path, index=False)
    return path


def test_train_writes_metrics(csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(csv), "--out", str(out), *FAST, "--top-k", "5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"validation", "test"} <= set(metrics)
    for split in ("validation", "test"):
        assert 0.0 <= metrics[split]["ndcg@5"] <= metrics[split]["hr@5"] <= 1.0
    assert metrics["epochs_run"] == 1
    printed = json.loads(capsys.readouterr().out)  # the summary on stdout is JSON
    assert printed["test"] == {k: metrics["test"][k] for k in ("ndcg@5", "hr@5", "mrr@5")}
    assert printed["out"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["data"], config["top-k"], config["emb-dim"]) == (str(csv), 5, 8)


def test_train_reads_a_config_file_and_flags_override_it(csv, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("emb-dim = 4\nepochs = 3\nmin-item-count = 1\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(csv), "--out", str(out), "--config", str(toml), *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["emb-dim"], config["epochs"], config["min-item-count"]) == (8, 1, 1)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedseqrec: error: ")
    return lines[0]


def test_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "nope.csv"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), *FAST]) == 2
    line = one_line_error(capsys)
    assert str(missing) in line and "not found" in line


def test_bad_column(csv, tmp_path, capsys):
    assert main(["train", "--data", str(csv), "--out", str(tmp_path / "run"), "--user-col", "uid", *FAST]) == 2
    line = one_line_error(capsys)
    assert "missing column(s) uid" in line and "found user_id, item_id, timestamp" in line


def test_bad_file_content_names_the_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n1,x,4\n")
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST]) == 2
    assert "line 3: item_id 'x' is not an integer ID" in one_line_error(capsys)


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--model", "foo", "key 'model' must be one of sasrec, gru, lstm; got 'foo'"),
        ("--epochs", "many", "key 'epochs' must be int, got 'many'"),
        ("--dropout", "1.5", "config key 'dropout': must be in [0, 1)"),
    ],
)
def test_bad_flag_value(csv, tmp_path, capsys, flag, value, needle):
    argv = ["train", "--data", str(csv), "--out", str(tmp_path / "run"), *FAST, flag, value]
    assert main(argv) == 2
    assert needle in one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # rejected before anything is written


def test_unreadable_config_file(csv, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = = 1\n")
    assert main(["train", "--data", str(csv), "--out", str(tmp_path / "run"), "--config", str(toml)]) == 2
    assert str(toml) in one_line_error(capsys)


def test_unknown_flag_is_one_line_too(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--bogus", "1"]) == 2
    assert "unrecognized arguments: --bogus" in one_line_error(capsys)


def test_config_lists_every_key_with_its_default(capsys):
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    listed = {key: json.loads(value) for key, value in (line.split(" = ", 1) for line in lines)}
    assert listed == RunConfig().to_flat()


def test_sigterm_stops_training_but_keeps_the_best_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedseqrec.cli",
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
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # interrupted: non-zero, with one line
    assert stderr.strip().splitlines()[-1].startswith("fedseqrec: training stopped in epoch ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and 2 <= metrics["epochs_run"] < 500
    assert (out / "model.pt").exists() and "ndcg@10" in metrics["test"]


LOG_PROBE = """
from logging import INFO
import {app}  # noqa: F401 - the app's imports, Opacus among them
from flwr.common.logger import log
log(INFO, "fedseqrec: round 1/1 probe")
"""


@pytest.mark.parametrize("app", ["server.app", "client.app"])
def test_a_log_record_is_printed_once_in_an_app_process(app):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LOG_PROBE.format(app=app)], capture_output=True, text=True, check=True)
    assert (done.stdout + done.stderr).count("fedseqrec: round 1/1 probe") == 1


def test_federate_help_names_files_that_exist(capsys):
    import re
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["federate", "--help"])
    named = re.findall(r"simulations/configs/[\w.-]+\.toml", capsys.readouterr().out)
    assert named
    root = Path(__file__).resolve().parents[2]
    assert all((root / name).is_file() for name in named), named


@pytest.mark.parametrize(
    "content, needle",
    [(None, "config file not found"), ("epochs = = 1\n", "not valid TOML"), ("epohcs = 1\n", "unknown key 'epohcs'")],
)
def test_federate_and_deploy_report_a_bad_run_config_file_in_one_line(tmp_path, content, needle):
    """Every command reads run-config files through common.config.read_toml: one line, exit 2, no traceback."""
    import subprocess
    import sys

    toml = tmp_path / "run.toml"
    if content is not None:
        toml.write_text(content)
    commands = {
        "fedseqrec": [sys.executable, "-m", "fedseqrec.cli", "federate", "--run-config", str(toml)],
        "deploy": [
            sys.executable,
            "-m",
            "fedseqrec.launch.deploy",
            "--data",
            "synthetic",
            "--work",
            str(tmp_path / "work"),
            "--run-config",
            str(toml),
        ],
    }
    for prefix, argv in commands.items():
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: ") and needle in lines[0], done.stderr
        assert str(toml) in lines[0]


def test_set_reads_toml_values_and_bare_words():
    from common.config import parse_settings

    assert parse_settings(["num-server-rounds=20", "server-lr=4e-3", "augment=crop,mask", 'out-dir="a b"']) == {
        "num-server-rounds": 20,
        "server-lr": 0.004,
        "augment": "crop,mask",
        "out-dir": "a b",
    }
    assert parse_settings(["federated-evaluation=true"]) == {"federated-evaluation": True}


def test_repeated_set_flags_all_count_and_a_key_set_twice_is_an_error():
    from common.config import parse_settings
    from fedseqrec.cli import build_parser

    args = build_parser().parse_args(["federate", "--set", "num-server-rounds=30", "--set", "augment=all", "seed=3"])
    assert parse_settings(args.set) == {"num-server-rounds": 30, "augment": "all", "seed": 3}
    assert parse_settings(["seed=3", "seed=3"]) == {"seed": 3}  # the same value twice is no ambiguity
    with pytest.raises(ConfigError, match="'seed' twice"):
        parse_settings(["seed=3", "seed=4"])


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--poll-interval", "0", "0 s is outside 0.01-60 s"),
        ("--poll-interval", "soon", "'soon' is not a number of seconds"),
        ("--heartbeat-interval", "5", "5 s is outside 10-1800 s"),
    ],
)
def test_deploy_refuses_timings_flower_would_not_take(tmp_path, capsys, flag, value, needle):
    from fedseqrec.launch.deploy import main as deploy_main

    with pytest.raises(SystemExit) as exited:
        deploy_main(["--data", "synthetic", "--work", str(tmp_path / "work"), flag, value])
    assert exited.value.code == 2
    assert f"argument {flag}: {needle}" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # refused before anything was written or started
