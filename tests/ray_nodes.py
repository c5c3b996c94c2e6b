"""Ray nodes for the end-to-end tests: `ray start --block` processes on this machine (free ports, a
private temp dir, stopped by pid: never `ray stop`, which would end every Ray on the machine).

- `LocalRayCluster`: a head and worker nodes, for `fedseqrec federate --ray-address`.
- `shared_head()`: one head per test process that every in-process simulation of that process joins
  (tests/sim_runner.py). A private Ray instance costs ~6-12 s to start and ~1.3 s to stop on the
  2-core CI box, ~40 times a suite; joining a running head costs ~0.2 s. Each simulation is its own
  Ray job (its own worker processes, ended with its driver), so runs still share no Python state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fedseqrec.launch.processes import VENV_BIN, ProcessTracker, free_port

ROOT = Path(__file__).resolve().parents[1]


class LocalRayCluster:
    """`ray start --head --block` and `ray start --address=... --block`, every port free.

    --block keeps each `ray start` in the foreground with Ray's processes as its children, so the
    tracker (fedseqrec/launch/processes.py) knows them all by pid and stops exactly those."""

    def __init__(
        self,
        work: Path,
        workers: int = 1,
        cpus_per_node: int = 1,
        object_store_bytes: int = 100_000_000,
        worker_ports: tuple[int, int] | None = None,
    ):
        # Ray's unix sockets live under the temp dir: keep its path short (107 bytes at most).
        self.temp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.work, self.workers, self.cpus, self.store = work, workers, cpus_per_node, object_store_bytes
        self.worker_ports = worker_ports
        self.tracker = ProcessTracker(poll_seconds=2.0)
        self.port = free_port()
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, name: str, *args: str) -> None:
        command = [str(VENV_BIN / "ray"), "start", "--block", f"--num-cpus={self.cpus}", "--node-ip-address=127.0.0.1"]
        command += [f"--object-store-memory={self.store}", "--disable-usage-stats", f"--temp-dir={self.temp}"]
        command += [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
        if self.worker_ports:
            command += [f"--min-worker-port={self.worker_ports[0]}", f"--max-worker-port={self.worker_ports[1]}"]
        # cwd: the project root, where an in-process simulation runs (its workers start there)
        self.tracker.start(name, command + list(args), self.work / f"{name}.log", self.env, ROOT)

    def start(self, timeout: float = 120.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._node(
            "ray-head",
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        )
        self._wait_for("ray-head", timeout)
        for i in range(self.workers):
            self._node(f"ray-worker-{i}", f"--address={self.address}")
            self._wait_for(f"ray-worker-{i}", timeout)

    def _wait_for(self, name: str, timeout: float) -> None:
        log, deadline = self.work / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "block forever" in log.read_text(errors="replace"):  # printed once the node is up
                return
            if self.tracker.started[name].poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{name} did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.tracker.started.values())

    def stop(self) -> None:
        self.tracker.close(20.0)
        alive = self.tracker.alive()
        if not alive:
            shutil.rmtree(self.temp, ignore_errors=True)
        assert alive == [], f"Ray processes still alive: {alive}"


_shared: LocalRayCluster | None = None


def _worker_ports() -> tuple[int, int]:
    """Ports for this test process's head's workers and drivers. A raylet hands them out from its range
    without asking whether another Ray on the machine holds one (Ray's default, 10002-19999, is what
    every private instance uses: a `fedseqrec federate` in a test, the other test process's head),
    and a driver given a taken port dies at start; so each test process gets its own range above it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 20000 + 1000 * (index % 12)  # below Linux's ephemeral ports (32768-60999), where free_port() draws
    return low, low + 999


def shared_head() -> str:
    """The address of this test process's own Ray head (started on first use, stopped at the session's
    end) with as many CPUs as a private instance of tests/sim_runner.py would have had."""
    global _shared
    if _shared is not None and not _shared.alive():  # killed under us: start a fresh one
        _shared.stop()
        _shared = None
    if _shared is None:
        work = Path(tempfile.mkdtemp(prefix="fedseqrec-ray-head-"))
        head = LocalRayCluster(
            work, workers=0, cpus_per_node=2, object_store_bytes=500_000_000, worker_ports=_worker_ports()
        )
        head.start()
        _shared = head
    return _shared.address


def stop_shared_head() -> None:
    """Stop this process's shared head, if one was started (tests/conftest.py, at the session's end)."""
    global _shared
    if _shared is not None:
        head, _shared = _shared, None
        head.stop()
        shutil.rmtree(head.work, ignore_errors=True)  # its logs; kept if it failed to stop (the assert above)
