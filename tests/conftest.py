"""Shared test set-up: the line between fast and slow tests, the thread count, a preprocessing cache
per test module, and the helpers that several test modules use (simulated runs in a child process,
an independent DP oracle)."""

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# Fast tests live in tests/unit/, end-to-end ones (whole simulated federations, loopback deployments,
# Ctrl-C on real commands) in tests/e2e/: every test there is slow by its folder, so `pytest tests/unit`
# (or `pytest -m "not slow"`) is the quick loop for development. The line is checked while the tests
# run: a test outside tests/e2e/ that starts a Flower process or Flower's simulation engine (its Ray
# processes, or tests/sim_runner.py) fails at once, naming the folder it belongs in; nothing is
# inferred from a test's source, so renaming a helper cannot move a test from one side to the other.
TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
STARTS_FLOWER = {
    "flower-superlink",
    "flower-supernode",
    "fedseqrec.launch.supernode",  # Flower's SuperNode with its timings set
    "flower-simulation",
    "flwr",
    "flwr-serverapp",
    "flwr-clientapp",
    "gcs_server",  # Ray, which Flower's simulation engine starts
    "raylet",
    "sim_runner.py",
}
_current: pytest.Item | None = None  # the test being set up, run or torn down in this process


def _in_e2e(item: pytest.Item) -> bool:
    return E2E in Path(item.path).resolve().parents


# The modules that take longest (seconds in CI's --durations, 2026-12-08), started first: with two
# workers and `--no-loadscope-reorder` (pyproject), each worker begins on one of the two longest and the
# many short modules fill in behind them, so that both workers finish together. xdist's default order
# (most tests first) started these last and left one worker alone for the last ~90 s.
LONGEST_FIRST = (
    "e2e/test_loopback_devices.py",  # ~300 s
    "e2e/test_stop.py",  # ~200 s
    "e2e/test_cohort.py",  # ~100 s
    "e2e/test_release_claim.py",
    "e2e/test_ray_cluster.py",
    "e2e/test_tune.py",
    "e2e/test_privacy_truth.py",
    "e2e/test_federation.py",
)


def _start_rank(item: pytest.Item) -> int:
    path = Path(item.path).resolve()
    relative = path.relative_to(TESTS).as_posix() if TESTS in path.parents else ""
    return LONGEST_FIRST.index(relative) if relative in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_e2e(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_start_rank)  # stable: every other test keeps its place


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _current
    _current = item  # before its fixtures: a module-scoped fixture that starts a run counts too


def _refuse_outside_e2e(program: str) -> None:
    """A fast test that starts a Flower or Ray process (or a simulation) fails where it starts it."""
    if _current is not None and not _in_e2e(_current):
        raise RuntimeError(
            f"{_current.nodeid} starts {program}: a test that starts Flower or a simulation belongs "
            f"in tests/e2e/ (slow by its folder), not in the quick loop"
        )


def _no_flower_outside_e2e(event: str, args: tuple) -> None:
    """Audit hook: every process a test starts through `subprocess` (runs forked from the fork server
    below do not pass here: `_start` checks them itself)."""
    if event != "subprocess.Popen" or _current is None or _in_e2e(_current):
        return
    executable, argv = args[0], args[1]
    argv = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv or [])
    names = {os.path.basename(os.fsdecode(a)) for a in [executable, *argv] if isinstance(a, str | bytes | os.PathLike)}
    started = names & STARTS_FLOWER
    if started:
        _refuse_outside_e2e(sorted(started)[0])


sys.addaudithook(_no_flower_outside_e2e)


# The tests use tiny models: one intra-op thread is fastest, and avoids oversubscribing small CI machines.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A preprocessing cache per test module; simulations started by a test get it as FEDSEQREC_CACHE."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache_env(cache, monkeypatch):
    """This process uses the module's cache too (`pytestmark = pytest.mark.usefixtures("cache_env")`)."""
    monkeypatch.setenv("FEDSEQREC_CACHE", str(cache))


# --- simulated runs: the real ServerApp/ClientApp on Flower's simulation engine, in a child process
# (so that a test can SIGKILL it mid-run and resume)

ROOT = Path(__file__).resolve().parents[1]

SIM_CONFIG = {
    "data": "synthetic",
    "synthetic-users": 120,
    "synthetic-items": 60,
    "partition": "iid",
    "num-partitions": 4,
    "clients-per-round": 4,
    "num-server-rounds": 4,
    "model": "sasrec",
    "emb-dim": 16,
    "num-layers": 1,
    "max-len": 20,
    "batch-size": 32,
    "local-epochs": 2,
    "local-lr": 0.01,
    "strategy": "fedavg",
    "dropout": 0.0,
}

# Each run is a fork of one server process per test process that has imported torch, Flower's engine
# and the apps once: a fresh interpreter spent ~3 s of CPU on those imports, ~40 times a suite, on a
# CPU-bound 2-core box. The fork server never runs anything itself (no thread pools, no RNG draws), so
# every run starts from the same freshly imported state, as a new interpreter would.
_PRELOAD = [
    "torch",
    "flwr.simulation.run_simulation",
    "fedseqrec.launch.simulate",
    "fedseqrec.launch.in_process",
    "server.app",
    "client.app",
    "client.handlers",
    "tests.sim_runner",
]
_fork_server = None


def _fork_context():
    global _fork_server
    if _fork_server is None:
        import multiprocessing

        _fork_server = multiprocessing.get_context("forkserver")
        _fork_server.set_forkserver_preload(_PRELOAD)
    return _fork_server


class ForkedRun:
    """A run forked from the fork server, with the part of `subprocess.Popen` the tests use."""

    def __init__(self, process, log: Path):
        self.process, self.log = process, log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # negative: killed by that signal, as Popen reports it

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"simulated run (pid {self.pid})", timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self.wait(timeout)
        return self.log.read_text(errors="replace"), None


def _start(
    run_config: dict,
    cache: Path,
    num_supernodes: int = 4,
    client_app: str = "client.app:app",
    backend: str = "in-process",
) -> ForkedRun:
    """A simulated run in a child process (its stdout and stderr in a log file beside the cache).
    Flower's engine runs the ClientApp in that process (`backend = "in-process"`: no Ray, ~2.5 s for
    a tiny run against ~12-17 s on Ray), or, with `backend = "ray"`, in Ray actors of one Ray head
    per test process, which every such run joins."""
    from tests.ray_nodes import shared_head
    from tests.sim_runner import run_forked

    _refuse_outside_e2e("sim_runner.py")
    spec = {"run_config": run_config, "num_supernodes": num_supernodes, "client_app": client_app, "backend": backend}
    spec["ray_address"] = shared_head() if backend == "ray" else None
    env = {**os.environ, "FEDSEQREC_CACHE": str(cache), "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    handle, log = tempfile.mkstemp(prefix="run-", suffix=".log", dir=cache)
    os.close(handle)
    process = _fork_context().Process(target=run_forked, args=(spec, env, log), daemon=False)
    process.start()
    return ForkedRun(process, Path(log))


def pytest_sessionfinish(session, exitstatus):
    from tests.ray_nodes import stop_shared_head

    stop_shared_head()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _kill_after_round(run_config: dict, cache: Path, out: Path, round_: int, **kwargs) -> None:
    """Start a run and SIGKILL its whole process group once its checkpoint reaches `round_`."""
    proc = _start(run_config, cache, **kwargs)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            checkpoint = out / "checkpoint.pt"
            if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["round"] >= round_:
                break
            time.sleep(0.05)
    finally:
        _kill_group(proc)  # SIGKILL: no chance to clean up


def _run(run_config: dict, cache: Path, timeout: float = 600, **kwargs) -> str:
    proc = _start(run_config, cache, **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, out[-4000:]
    return out


# --- each log record printed once (common/logs.py): no second handler on the root logger

# A record printed again by a root handler that logging.basicConfig installed: its default format
# (absl's first log call) or Opacus' (on import).
_ROOT_HANDLER_LINE = re.compile(
    r"(?:^|\s)(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:"  # basicConfig's default (absl), also after Ray's prefix
    r"|\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:",  # Opacus' format
    re.M,
)
_ROUND_LINE = re.compile(r"fedseqrec: round (\d+)/\d+ ")


def assert_each_record_once(output: str) -> None:
    """Every `fedseqrec: round N/T` line of a run's output once, and no record repeated by a root handler."""
    repeated = _ROOT_HANDLER_LINE.findall(output)
    assert not repeated, f"records printed again by a root handler: {repeated[:3]}"
    rounds = _ROUND_LINE.findall(output)
    assert rounds, "no round line in the output"
    assert len(rounds) == len(set(rounds)), f"round lines repeated: {rounds}"


# --- an independent oracle for DP accounting


def gaussian_rdp_epsilon(z: float, rounds: int, delta: float) -> float:
    """Independent oracle: RDP of the Gaussian mechanism, alpha * T / (2 z^2), converted with the
    same conversion dp-accounting uses (Canonne et al. 2020 / Balle et al. 2020)."""
    best = math.inf
    for alpha in np.linspace(1.01, 200, 20000):
        rdp = alpha * rounds / (2 * z * z)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


# The cohort engine on small synthetic data (test_cohort, test_dp_ftrl, test_secure_aggregation).
COHORT = {
    "data": "synthetic",
    "synthetic-users": 200,
    "synthetic-items": 50,
    "partition": "user",
    "train-windows": "last",
    "model": "sasrec",
    "emb-dim": 16,
    "num-layers": 1,
    "max-len": 20,
    "dropout": 0.0,
    "cohort-engine": True,
    "cohort-chunk": 16,
    "clients-per-round": 60,
    "num-server-rounds": 6,
    "local-epochs": 1,
    "local-optimizer": "sgd",
    "local-lr": 1.0,
    "strategy": "fedadam",
    "server-lr": 0.01,
    "server-tau": 1e-6,
    "server-lr-warmup": 2,
}


def _reply(arrays: dict, users: int, loss: float = 1.0):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    ask = Message(content=RecordDict({"config": ConfigRecord({})}), message_type="train", dst_node_id=3)
    return Message(
        content=RecordDict(
            {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": users, "train-loss": loss})}
        ),
        reply_to=ask,
    )
