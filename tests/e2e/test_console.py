"""What a person sees while a command runs: one progress line in place on a terminal, plain lines
elsewhere, Flower's per-round records in the run's log file only (fedseqrec/console.py,
fedseqrec/streamed_log.py)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from fedseqrec.console import ERASE_LINE
from fedseqrec.streamed_log import LOG_FILE
from tests.conftest import ROOT
from tests.unit.test_console import PER_ROUND, _states

BIN = Path(sys.executable).parent


def _on_a_terminal(argv: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal (200 columns) as its stdout and stderr; (exit code, output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, start_new_session=True
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal's other end closed: the command ended
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


def test_train_on_a_terminal_updates_one_line(tmp_path):
    out = tmp_path / "run"
    argv = [str(BIN / "fedseqrec"), "train", "--data", "synthetic", "--out", str(out), "--epochs", "3"]
    argv += ["--max-len", "10", "--emb-dim", "8", "--synthetic-users", "60", "--num-layers", "1"]
    code, shown = _on_a_terminal(argv, {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache")}, 120)
    assert code == 0, shown
    progress, _, result = shown.partition("\r\n{")  # the progress line, then the JSON summary
    assert json.loads("{" + result)["out"] == str(out)
    draws = progress.split(ERASE_LINE)[1:]
    assert len(draws) >= 3 and all("\n" not in d for d in draws)  # in place: no new line until the end
    assert [d.split()[1] for d in draws][-1] == "3/3" and "val ndcg@10" in draws[-1]


def test_federate_on_a_terminal_shows_one_progress_line_and_logs_flower_records(tmp_path):
    toml = tmp_path / "run.toml"
    settings = {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 30, "num-partitions": 2}
    settings |= {"clients-per-round": 2, "num-server-rounds": 4, "model": "gru", "emb-dim": 8, "max-len": 10}
    settings |= {"local-epochs": 1, "num-threads": 1, "eval-every-rounds": 2}
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    out = tmp_path / "run"
    argv = [str(BIN / "fedseqrec"), "federate", "--run-config", str(toml), "--out-dir", str(out)]
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache"), "FLWR_TELEMETRY_ENABLED": "0"}
    code, shown = _on_a_terminal(argv, env, 400)
    assert code == 0, shown
    draws = _states(shown)
    assert [d.split()[1] for d in draws] == ["1/4", "2/4", "3/4", "4/4"], shown
    assert "\n" not in shown.split(ERASE_LINE + "round 1/4")[1].split(ERASE_LINE + "round 4/4")[0]  # in place
    assert "val ndcg@10" not in draws[0] and "(round 2, best" in draws[2]  # the last validation figure stays
    assert "fedseqrec: round" not in shown and "fedseqrec: done; test ndcg@10" in shown
    assert f"fedseqrec: every result on one page: fedseqrec report {out}" in shown
    assert not [word for word in PER_ROUND if word in shown], shown
    logged = (out / LOG_FILE).read_text()
    assert logged.count("configure_train: Sampled 2 nodes") == 4 and "aggregate_train: Received" in logged
    assert len(re.findall(r"fedseqrec: round \d/4", logged)) == 4
