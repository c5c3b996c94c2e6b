"""Process control for commands that start Flower: track, stop, and stop at once on a second Ctrl-C.

A `ProcessTracker` starts each process in its own session (so a Ctrl-C in the terminal reaches only
the command) and remembers every descendant it sees (a thread polls), so a process stays known after
its parent dies and it is re-parented. Processes are only ever found this way, by pid from the
processes the command started, never by name across the machine; psutil checks each pid's start
time, so a reused pid is never signalled. `become_subreaper()` makes orphans of this command its own
children instead of init's, so none can slip out of the tree.

`StopSignals` turns SIGINT and SIGTERM into a two-step stop: the first raises KeyboardInterrupt in
the main thread (stop cleanly), the next SIGKILLs every tracked process at once and raises
`StoppedAtOnce`; later ones are ignored.

Also here: what every Flower process started on this kind of machine needs (environment, a free
port, the CLI's connection file), shared by `fedseqrec federate` and the loopback deployment.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
# What every Flower process started here needs: no `uv sync` of [project].dependencies per run (the
# SuperLink would otherwise install them, and uv would fetch a CUDA torch) and no telemetry.
FLOWER_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0"}
# Seconds between a SuperExec's looks for a task to start (the SuperLink's starts the ServerApp,
# each SuperNode's a ClientApp per message); Flower's default 1 s.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The Flower processes that run a ServerApp (simulation and deployment runtime).
SERVERAPP_PROGRAMS = ("flwr-simulation", "flwr-serverapp")
_SUBREAPER = False
_TRACKERS: weakref.WeakSet[ProcessTracker] = weakref.WeakSet()


class StoppedAtOnce(BaseException):
    """A second SIGINT or SIGTERM arrived during the clean stop: every tracked process was SIGKILLed."""


class ProcessTracker:
    """Processes started here plus every descendant seen, stopped together.

    With `own_descendants` (default: when this process called `become_subreaper()`, i.e. is a
    command that owns its whole tree), every descendant of this process counts too, orphans included.
    """

    def __init__(self, poll_seconds: float = 0.5, own_descendants: bool | None = None):
        self.started: dict[str, subprocess.Popen] = {}
        self._seen: dict[int, psutil.Process] = {}
        self._own = psutil.Process() if (_SUBREAPER if own_descendants is None else own_descendants) else None
        self._lock = threading.RLock()  # re-entrant: a signal handler in the main thread may snapshot
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(poll_seconds,), daemon=True)
        self._thread.start()
        _TRACKERS.add(self)

    def start(self, name: str, command: list[str], log: Path | None, env: dict, cwd: Path, **popen) -> subprocess.Popen:
        """Start `command` in its own session; output appended to `log` (if None: as `popen` says)."""
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                out.write(f"$ {' '.join(command)}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
        else:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True, **popen
            )
        with self._lock:
            self.started[name] = proc
            try:
                self._seen[proc.pid] = psutil.Process(proc.pid)
            except psutil.NoSuchProcess:
                pass
        self.snapshot()
        return proc

    def snapshot(self) -> None:
        with self._lock:
            roots = list(self._seen.values()) + ([self._own] if self._own else [])
        # One pass over the machine's process table for every root: `root.children(recursive=True)`
        # makes one per root, ~25 passes every half second, a tenth of a core on a busy machine.
        kids: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            kids.setdefault(proc.info["ppid"], []).append(proc)
        found = {}
        for root in roots:
            try:
                if not root.is_running():  # gone, or its pid reused: its pid's children are not ours
                    continue
                born, stack = root.create_time(), [root.pid]
            except psutil.Error:
                continue
            while stack:
                for child in kids.get(stack.pop(), ()):
                    try:
                        # Older than the root: a reused pid, not a descendant (as psutil's children()).
                        if child.pid in found or child.create_time() < born:
                            continue
                    except psutil.Error:
                        continue
                    found[child.pid] = child
                    stack.append(child.pid)
        with self._lock:
            for pid, proc in found.items():
                self._seen.setdefault(pid, proc)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.snapshot()

    def pids(self) -> list[int]:
        """Every pid started or seen as a descendant."""
        with self._lock:
            return sorted(self._seen)

    def processes(self) -> list[psutil.Process]:
        """Tracked processes still running (not zombies)."""
        with self._lock:
            procs = list(self._seen.values())
        return [p for p in procs if _running(p)]

    def alive(self) -> list[int]:
        return sorted(p.pid for p in self.processes())

    def running(self, program: str) -> list[psutil.Process]:
        """Tracked processes running `program` (matched on the tracked processes only)."""
        return [p for p in self.processes() if _runs(p, program)]

    def stop(self, names: Sequence[str] | None = None, grace: float = 15.0) -> None:
        """SIGTERM the named processes (default: all) and their descendants, SIGKILL after `grace` s."""
        self.snapshot()
        with self._lock:
            if names is None:
                targets = list(self._seen.values())
            else:
                targets = []
                for name in names:
                    if name in self.started and self.started[name].pid in self._seen:
                        root = self._seen[self.started[name].pid]
                        targets.append(root)
                        try:
                            targets += root.children(recursive=True)
                        except psutil.NoSuchProcess:
                            pass
        terminate(targets, grace)
        self.reap()

    def kill(self) -> None:
        """SIGKILL every tracked process now, without waiting (safe in a signal handler)."""
        procs = list(self._seen.values())  # one C-level copy: no lock needed
        for proc in procs:
            _send(proc, signal.SIGKILL)

    def reap(self) -> None:
        """Collect the exit status of our own children (started ones and adopted orphans)."""
        for popen in list(self.started.values()):
            try:
                popen.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        started = {p.pid for p in self.started.values()}
        for pid in list(self._seen):
            if pid in started:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)  # an orphan re-parented to us (subreaper) becomes ours to reap
            except ChildProcessError:
                pass

    def close(self, grace: float = 15.0) -> None:
        try:
            self.stop(None, grace)
        finally:
            self._stop.set()
            self._thread.join(timeout=2)


def terminate(procs: Sequence[psutil.Process], grace: float, first: int = signal.SIGTERM) -> None:
    """`first` (SIGTERM), wait up to `grace` s, SIGKILL the survivors, wait for them (they are gone then)."""
    procs = [p for p in procs if _running(p)]
    for proc in procs:
        _send(proc, first)
    survivors = wait_gone(procs, grace)
    for proc in survivors:
        _send(proc, signal.SIGKILL)
    wait_gone(survivors, 5.0)


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie counts as exited); return those still running.

    psutil.wait_procs would wait on a zombie whose parent is not this process until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def kill_tracked() -> None:
    """SIGKILL every process of every live tracker."""
    for tracker in list(_TRACKERS):
        tracker.kill()


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process (not init), so they stay in its tree.

    For a command's own process only (never a library user's): trackers made afterwards count every
    descendant of this process as theirs."""
    global _SUBREAPER
    try:
        _SUBREAPER = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        _SUBREAPER = False
    return _SUBREAPER


def stop_serverapps(tracker: ProcessTracker, grace: float) -> None:
    """SIGINT the tracked processes that run a ServerApp, alone, before any other; SIGKILL after `grace` s.

    Call after Flower's stop for the run (`flwr stop`), which marks the run stopped but left
    flwr-simulation running rounds for 15 s and more here. SIGINT runs Flower's graceful exit;
    SIGTERM does not: Ray replaces the driver's SIGTERM handler with `sys.exit`, and flwr-simulation
    then waited a minute for its ServerApp thread. These processes write the run folder (checkpoints
    atomically); stopped first, a ServerApp never sees its clients vanish, so it never records a
    round whose clients failed only because of the stop."""
    tracker.snapshot()
    terminate([p for program in SERVERAPP_PROGRAMS for p in tracker.running(program)], grace, first=signal.SIGINT)


class StopSignals:
    """SIGINT/SIGTERM: the first raises KeyboardInterrupt, the next kills every tracked process at once.

    with StopSignals() as signals:
        try:
            ...                      # run
        except KeyboardInterrupt:
            ...                      # stop cleanly; a second Ctrl-C raises StoppedAtOnce here
        return signals.exit_code     # 130 after SIGINT, 143 after SIGTERM
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in SIGNALS:  # installed even if started with SIGINT ignored (`cmd &`)
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def ignore(self) -> None:
        """Ignore SIGINT and SIGTERM from now until the block ends."""
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            raise KeyboardInterrupt(f"signal {signum}")
        self.ignore()
        kill_tracked()
        raise StoppedAtOnce(f"signal {signum}")


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$|^(?P<plain>.+)\.tmp$")


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete what an interrupted atomic write left behind (`.NAME.tmpPID`, `NAME.tmp`) under `folder`.

    Only call this when no process that writes there is running."""
    removed = []
    for path in Path(folder).rglob("*.tmp*"):
        if path.is_file() and _PARTIAL.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _runs(proc: psutil.Process, program: str) -> bool:
    try:
        return any(os.path.basename(arg) == program for arg in proc.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _send(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)  # psutil refuses if the pid now belongs to another process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


# --------------------------------------------------------------------------------------------
# Flower's environment


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ plus FLOWER_ENV, the venv's binaries first on PATH, FLWR_HOME, unbuffered output;
    data and cache dirs made absolute (Flower's processes run in other folders)."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    for var in ("FEDSEQREC_DATA_DIR", "FEDSEQREC_CACHE"):
        if env.get(var):
            env[var] = str(Path(env[var]).expanduser().resolve())
    env.update(extra or {})
    return env


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, values: Mapping) -> Path:
    """A flat TOML file (`key = value` lines), the form `flwr run --run-config FILE` reads."""
    Path(path).write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in values.items()))
    return Path(path)


def write_connection(flwr_home: Path, name: str, entry: Mapping) -> None:
    """`$FLWR_HOME/config.toml` with one SuperLink connection `name`, the default."""
    lines = ["[superlink]", f"default = {toml_value(name)}", "", f"[superlink.{name}]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    (Path(flwr_home) / "config.toml").write_text("\n".join(lines) + "\n")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
