"""`fedseqrec federate`: `flwr run .` on a local simulation sized to the run's client count.

It sets what the local SuperLink needs on this kind of machine (no runtime `uv sync` of the
dependencies, no telemetry, the venv's Flower binaries on PATH), passes
`--federation-config num_supernodes=<clients>`, streams the logs, and stops the detached local
SuperLink that `flwr run` starts, by its pid, even when the run fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from common.config import RunConfig
from common.data import load_sequence_data
from common.partition import partition_users

PROJECT_DIR = Path(__file__).resolve().parents[1]


def project_defaults() -> dict:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def resolve_config(run_config_file: str | None) -> tuple[RunConfig, dict]:
    overrides = tomllib.loads(Path(run_config_file).read_text()) if run_config_file else {}
    return RunConfig.from_flat({**project_defaults(), **overrides}, where=run_config_file or "pyproject.toml"), overrides


def num_clients(config: RunConfig) -> int:
    data = load_sequence_data(config.data)
    return partition_users(data, config.federation, config.train.seed).num_clients


def _superlink_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "flower-superlink"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def federate(run_config_file: str | None, cpus_per_client: float = 1.0) -> int:
    config, _ = resolve_config(run_config_file)
    clients = num_clients(config)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    for var in ("FEDSEQREC_DATA_DIR", "FEDSEQREC_CACHE"):  # the SuperLink's processes run elsewhere
        if env.get(var):
            env[var] = str(Path(env[var]).expanduser().resolve())
    before = _superlink_pids()
    command = [str(Path(sys.executable).parent / "flwr"), "run", str(PROJECT_DIR), "--stream",
               "--federation-config", f"num_supernodes={clients} client_resources_num_cpus={cpus_per_client:g}"]
    if run_config_file:
        command += ["--run-config", str(Path(run_config_file).resolve())]
    print(f"fedseqrec: {clients} clients; running: {' '.join(command)}", flush=True)
    try:
        return subprocess.run(command, env=env, cwd=PROJECT_DIR).returncode
    finally:
        stop_processes(_superlink_pids() - before)  # only the SuperLink this run started


def stop_processes(pids: set[int], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.2)
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
