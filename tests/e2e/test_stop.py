"""Ctrl-C stops a command: every process it started ends, the last checkpoint stays, one line says
where the run stopped and which command resumes it, and that command resumes to the same result.

Each command runs in its own process group (start_new_session) and gets SIGINT the way a terminal
delivers Ctrl-C: to the whole group. A thread records every descendant while it runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from common.model.checkpoint import load_model

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
# Tiny and fast, with rounds to spare: a stop lets the ServerApp finish a few more rounds.
FED = {
    "data": "synthetic",
    "synthetic-users": 90,
    "synthetic-items": 50,
    "partition": "iid",
    "num-partitions": 3,
    "clients-per-round": 3,
    # Rounds take ~0.3 s here and a clean stop takes effect seconds after Ctrl-C (longer beside other
    # tests): 60 rounds leave the first run a margin of ~17 s quiet, where 30 were once overtaken in CI.
    "num-server-rounds": 60,
    # SASRec, not the GRU: the GRU's layers are Opacus', whose import costs each of the ~12 processes
    # that build the model (ServerApps, Ray actors, ClientApps) ~1.3 s of CPU
    "model": "sasrec",
    "emb-dim": 8,
    "max-len": 12,
    "batch-size": 32,
    "local-epochs": 1,
    "local-lr": 0.01,
    "strategy": "fedavg",
    "dropout": 0.0,
    "num-threads": 1,
    "eval-users": 30,
    "seed": 3,
}
ROUNDS = FED["num-server-rounds"]
STOP_BOUND = 60.0  # seconds from Ctrl-C until every process is gone
ROOT_LOG_LINE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:")  # a record repeated by a root handler


class Command:
    """A command in its own process group; every descendant seen is recorded."""

    def __init__(self, argv: list[str], folder: Path, env: dict, name: str):
        self.argv = argv
        self.stdout, self.stderr = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.seen: dict[int, psutil.Process] = {self.proc.pid: psutil.Process(self.proc.pid)}
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        root = self.seen[self.proc.pid]
        while self.proc.poll() is None:
            try:
                for child in root.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def children(self) -> list[list[str]]:
        try:
            return [child.cmdline() for child in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []

    def alive(self) -> list[str]:
        """Processes of the group and processes it started that still run (a zombie has ended)."""
        group = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.proc.pid:
                    group.append(proc)
            except (ProcessLookupError, psutil.Error):
                pass
        out = []
        for proc in [*self.seen.values(), *group]:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.Error:
                pass
        return sorted(set(out))

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace")

    def last_line(self) -> str:
        return self.output()[1].strip().splitlines()[-1]

    def kill_all(self) -> None:
        """Clean-up after a failed test: SIGKILL whatever it left, by pid (psutil checks pid reuse)."""
        for proc in [self.seen[self.proc.pid], *self.seen.values()]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _wait_for(condition, timeout: float, what: str, command: Command) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if command.proc.poll() is not None:
            pytest.fail(
                f"{' '.join(command.argv)} exited ({command.proc.returncode}) before {what}:\n"
                + "\n".join(t[-3000:] for t in command.output())
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _rows(out: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def _checkpoint_round(out: Path) -> int:
    return int(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["round"])


def _partial_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp" in p.name]


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if "seconds" not in k}


def _assert_stopped(
    command: Command, signalled: float, out: Path, how: str, total: int, resume: list[str], bound: float = STOP_BOUND
) -> int:
    """Exit 130 within `bound` s, nothing left running, and one last line: the round reached, the run
    folder, and the command that resumes (the same one). Returns the round."""
    assert command.wait(bound) == 130, command.output()
    assert time.monotonic() - signalled < bound
    assert command.alive() == []
    line = command.last_line()
    found = re.fullmatch(
        rf"(?:fedseqrec|deploy): {re.escape(how)} after round (\d+)/{total}; run folder (\S+); "
        r"resume with: (.+)",
        line,
    )
    assert found, line
    assert found[2] == str(out)
    assert shlex.split(found[3]) == resume
    assert sum("resume with" in line for line in command.output()[1].splitlines()) == 1
    reached = int(found[1])
    assert _checkpoint_round(out) == reached < total  # the last complete checkpoint stays
    assert _partial_files(out) == []  # nothing half-written
    return reached


def test_ctrl_c_stops_every_process_and_the_same_command_resumes(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in FED.items()))
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache"), "FLWR_TELEMETRY_ENABLED": "0"}
    out, reference_out = tmp_path / "run", tmp_path / "reference"
    argv = [str(BIN / "fedseqrec"), "federate", "--run-config", str(toml), "--out-dir", str(out)]
    resume = ["fedseqrec", *argv[1:]]
    # The uninterrupted run goes on alongside, on a SuperLink of its own: stopping one federation
    # must leave the other alone.
    reference = Command(
        [*argv[:-1], str(reference_out)],
        tmp_path,
        {**env, "FEDSEQREC_CACHE": str(tmp_path / "reference-cache")},
        "reference",
    )
    commands = [reference]
    try:
        # Ctrl-C after two rounds: a clean stop.
        first = Command(argv, tmp_path, env, "first")
        commands.append(first)
        _wait_for(lambda: len(_rows(out)) >= 2, 300, "second round", first)
        first.interrupt()
        reached = _assert_stopped(first, time.monotonic(), out, "stopped", ROUNDS, resume)
        assert [(r["round"], r["failed"]) for r in _rows(out)] == [(r, 0) for r in range(1, reached + 1)]
        written = (out / "metrics.jsonl").read_text()
        time.sleep(0.5)  # every process is gone (asserted above): nothing is left that could write
        assert (out / "metrics.jsonl").read_text() == written  # no round after the stop
        stdout = first.output()[0]
        assert not [line for line in stdout.splitlines() if ROOT_LOG_LINE.match(line)]  # each record once
        shown = re.findall(rf"fedseqrec: round (\d+)/{ROUNDS}", stdout)
        assert len(shown) == len(set(shown))
        # not a terminal: plain lines, one per evaluated round; Flower's per-round records in the log file
        assert "\r" not in stdout and "configure_train" not in stdout and "aggregate_train" not in stdout
        assert "configure_train: Sampled 3 nodes" in (out / "federate.log").read_text()

        # The same command resumes; a second Ctrl-C during the clean stop kills everything at once.
        second = Command(argv, tmp_path, env, "second")
        commands.append(second)
        _wait_for(lambda: len(_rows(out)) > reached, 300, "resumed round", second)
        second.interrupt()
        _wait_for(
            lambda: any(cmd[1:3] == [str(BIN / "flwr"), "stop"] for cmd in second.children()),
            60,
            "`flwr stop` (the clean stop under way)",
            second,
        )
        second.interrupt()
        again = _assert_stopped(
            second, time.monotonic(), out, "killed at once (second interrupt)", ROUNDS, resume, bound=20.0
        )
        assert again > reached
        assert [r["round"] for r in _rows(out)][-1] <= again  # metrics.jsonl never runs ahead of the checkpoint

        # And again, to the end: the result equals the uninterrupted run's.
        third = Command(argv, tmp_path, env, "third")
        commands.append(third)
        assert third.wait(600) == 0, third.output()
        assert reference.wait(600) == 0, reference.output()
        assert third.alive() == [] and reference.alive() == []
        stdout = third.output()[0]
        assert not [line for line in stdout.splitlines() if ROOT_LOG_LINE.match(line)]
        assert re.findall(rf"fedseqrec: round (\d+)/{ROUNDS}", stdout) == [str(r) for r in range(again + 1, ROUNDS + 1)]
        resumed, expected = load_model(out / "model.pt")[0].arrays(), load_model(reference_out / "model.pt")[0].arrays()
        assert resumed.keys() == expected.keys()
        for key in expected:
            assert torch.allclose(resumed[key], expected[key], atol=1e-6), key
        assert [_untimed(r) for r in _rows(out)] == [_untimed(r) for r in _rows(reference_out)]
    finally:
        for command in commands:
            command.kill_all()


def test_ctrl_c_stops_the_loopback_deployment(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        "".join(
            f"{k} = {json.dumps(v)}\n"
            for k, v in FED.items()
            if k not in ("data", "partition", "num-partitions", "clients-per-round", "num-server-rounds")
        )
    )
    work = tmp_path / "work"
    argv = [
        sys.executable,
        "-m",
        "fedseqrec.launch.deploy",
        "--data",
        "synthetic",
        "--nodes",
        "2",
        "--rounds",
        "20",
        "--work",
        str(work),
        "--run-config",
        str(toml),
        "--poll-interval",  # look for work every 0.2 s, not Flower's 3 s: the first round comes sooner
        "0.2",
    ]
    deploy = Command(argv, tmp_path, {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache")}, "deploy")
    try:
        _wait_for(lambda: len(_rows(work / "run")) >= 1, 300, "first round", deploy)
        deploy.interrupt()
        reached = _assert_stopped(
            deploy,
            time.monotonic(),
            work / "run",
            "stopped",
            20,
            ["python", "-m", "fedseqrec.launch.deploy", *argv[3:]],
        )
        # The ServerApp was stopped before its clients: no round counts clients lost to the stop.
        assert [(r["round"], r["failed"]) for r in _rows(work / "run")] == [(r, 0) for r in range(1, reached + 1)]
        assert json.loads((work / "logs" / "pids.json").read_text())["alive_after_stop"] == []
    finally:
        deploy.kill_all()
