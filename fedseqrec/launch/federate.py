"""`fedseqrec federate`: `flwr run` on a local simulation SuperLink of its own; Ctrl-C stops it all.

It starts `flower-superlink --simulation` on a free port with a private FLWR_HOME (no runtime
`uv sync`, no telemetry, the venv's Flower binaries on PATH), runs `flwr run <project> --stream`
with `--federation-config num_supernodes=<one per client, or the cohort engine's hosts>`, and
follows its log (fedseqrec/streamed_log.py): one progress line on the console, every record in
RUN_DIR/federate.log. The run folder is always fixed here (`--out-dir`, else the
run config's `out-dir`, else `runs/<timestamp>`; relative to the current directory) and passed
to the ServerApp, so that the same command with the same `--out-dir` resumes after the last
checkpoint.

Ctrl-C or SIGTERM: Flower's own stop for the run (`flwr stop <run-id>`), then SIGINT to the
process running the ServerApp, alone (it writes the checkpoints atomically, so the last complete
one stays), then SIGTERM to every other process this command started (found by pid and process
tree, never by name), SIGKILL after a grace period; exit 130 (143 for SIGTERM) with one line:
the round reached, the run folder and the command that resumes. A second Ctrl-C SIGKILLs
everything at once.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common.config import RunConfig, parse_settings, read_toml
from common.data.load import check_item_features, load_sequence_data
from common.data.partition import partition_users
from common.data.run_inputs import read_inputs, recorded_config
from common.errors import ConfigError, DataError, FedSeqRecError
from common.evaluation.user_groups import read_users_file
from common.outputs import check_output_dir
from fedseqrec.launch.app_files import stage_app
from fedseqrec.launch.processes import (
    VENV_BIN,
    ProcessTracker,
    StoppedAtOnce,
    StopSignals,
    become_subreaper,
    flower_env,
    free_port,
    remove_partial_files,
    stop_serverapps,
    wait_gone,
    write_connection,
    write_toml,
)
from fedseqrec.launch.ray_cluster import probe, ray_environment
from fedseqrec.launch.simulate import num_supernodes
from fedseqrec.streamed_log import LOG_FILE, StreamedLog

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedseqrec-local"


def resolve_config(
    run_config_file: str | None, extra: dict | None = None, where: str | None = None
) -> tuple[RunConfig, dict]:
    """The run's config (the defaults, which pyproject.toml repeats for Flower, plus the file's
    overrides) and the overrides alone, for `flwr run --run-config`."""
    overrides = read_toml(run_config_file) if run_config_file else {}
    overrides.update(extra or {})
    return RunConfig.from_flat(overrides, where=where or run_config_file or "run config"), overrides


def num_clients(config: RunConfig) -> int:
    """Clients of the run's partition (one SuperNode each, unless the cohort engine simulates them)."""
    data = load_sequence_data(config.data)
    return partition_users(data, config.federation, config.train.seed).num_clients


def run_folder(out_dir: str) -> Path:
    """The run folder for `out-dir` ("" picks runs/<timestamp>), absolute, from the current directory."""
    return Path(out_dir or f"runs/{dt.datetime.now():%Y%m%d-%H%M%S}").expanduser().resolve()


def init_model_path(init_model: str) -> Path:
    """`init-model` as an absolute path from the current directory; an error now rather than in the ServerApp."""
    path = Path(init_model).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config key 'init-model': {path} is not a file; give the model.pt of a finished run")
    return path


# Run-config keys that say where an input file is (resumable: server/run_state.py); `data` is not one:
# it also names which dataset.
_LOCATION_KEYS = ("data-dir", "users-file", "item-metadata", "init-model")


def resumed_inputs(run_dir: Path, config: RunConfig, overrides: dict) -> RunConfig:
    """A resume (the run folder has inputs.json): each input where the run recorded it, checked against
    its fingerprint (a changed file stops here, in one line), and those locations in `overrides`, so
    that the ServerApp and the clients need no environment either."""
    if read_inputs(run_dir) is None:
        return config
    pinned = recorded_config(run_dir, config)
    before, after = config.to_flat(), pinned.to_flat()
    for key in _LOCATION_KEYS:
        if after[key] != before[key]:
            overrides[key] = after[key]
    return RunConfig.from_flat({**before, **{k: after[k] for k in _LOCATION_KEYS}}, where=f"{run_dir} inputs.json")


def checkpoint_round(run_dir: Path) -> int:
    """The last round the run folder's checkpoint holds (0 when there is none)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return 0
    from common.model.checkpoint import read_torch_file

    todo = "move it away to start the run afresh, or restore it from a copy"
    blob = read_torch_file(path, "checkpoint", todo)  # a damaged file is one line, not a torch traceback
    if not isinstance(blob.get("round"), int):
        raise DataError(f"{path}: a checkpoint without its round number; {todo}")
    return blob["round"]


def stopped_line(who: str, how: str, run_dir: Path, total_rounds: int, resume: str, seen_round: int = 0) -> str:
    """The one line a stopped run ends with: the round reached, the run folder, the command that resumes."""
    saved = checkpoint_round(run_dir)
    if seen_round > saved:
        reached = f"at round {seen_round}/{total_rounds} (last checkpoint: round {saved})"
    elif saved:
        reached = f"after round {saved}/{total_rounds}"
    else:
        reached = f"before round 1/{total_rounds} was checkpointed"
    return f"{who}: {how} {reached}; run folder {run_dir}; resume with: {resume}"


def federate(
    run_config_file: str | None,
    cpus_per_client: float = 1.0,
    out_dir: str | None = None,
    settings: list[str] = (),
    verbose: bool = False,
    ray_address: str | None = None,
) -> int:
    """Run the federation; 0 when it completed, 130/143 when stopped by SIGINT/SIGTERM, else 1 or flwr's code.

    For the `fedseqrec federate` process itself: it installs SIGINT/SIGTERM handlers and becomes a
    subreaper that owns (and on a stop ends) every process below it."""
    extra = parse_settings(list(settings), "--set")
    if out_dir:
        extra["out-dir"] = out_dir
    where = " and ".join(filter(None, [run_config_file, "--set" if settings else ""])) or None
    config, overrides = resolve_config(run_config_file, extra, where)
    run_dir = run_folder(config.federation.out_dir)
    check_output_dir(run_dir, "out-dir")  # before any process starts
    config = resumed_inputs(run_dir, config, overrides)  # a resume reads what the run read, where it was
    if config.data.users_file and config.train.user_groups == "auto":
        read_users_file(config.data.users_file)  # a bad users file stops here, not in the ServerApp
    check_item_features(config.data)  # so does a feature name the metadata does not have
    if cpus_per_client <= 0:
        raise ConfigError(f"--cpus-per-client {cpus_per_client:g}: must be > 0 (CPUs given to each simulated client)")
    overrides["out-dir"] = str(run_dir)
    if config.federation.init_model:  # the ServerApp runs elsewhere: pass it an absolute path, checked now
        overrides["init-model"] = str(init_model_path(config.federation.init_model))
    resume = ["fedseqrec", "federate"] + (["--run-config", run_config_file] if run_config_file else [])
    if settings:
        resume += ["--set", *settings]
    if cpus_per_client != 1:
        resume += ["--cpus-per-client", f"{cpus_per_client:g}"]
    if ray_address:
        resume += ["--ray-address", ray_address]
    resume = shlex.join(resume + ["--out-dir", str(run_dir)])
    total = config.federation.num_server_rounds
    cluster = probe(ray_address) if ray_address else None  # an unreachable cluster stops here, in one line

    become_subreaper()  # orphans of the processes started below stay in this process's tree
    with StopSignals() as signals:
        federation = LocalFederation(run_dir, verbose=verbose)
        federation.env.update(
            ray_environment(cluster)
        )  # Flower's Ray backend joins it (fedseqrec/launch/ray_cluster.py)
        if cluster:
            print(
                f"fedseqrec: on the Ray cluster at {cluster.address}: {cluster.nodes} nodes, {cluster.cpus:g} CPUs "
                f"(at most {cluster.actors(cpus_per_client)} SuperNode actors at {cpus_per_client:g} CPUs each)",
                flush=True,
            )
        try:
            try:
                try:
                    nodes = num_supernodes(config)
                    code = federation.run(
                        overrides, f"num_supernodes={nodes} client_resources_num_cpus={cpus_per_client:g}", nodes
                    )
                except Exception:
                    federation.close()
                    raise
                federation.close()  # the SuperLink outlives a completed run
                if code == 0:
                    page = shlex.join(["fedseqrec", "report", str(run_dir)])
                    print(f"fedseqrec: every result on one page: {page}", flush=True)
                return code
            except KeyboardInterrupt:
                federation.stop()
                line = stopped_line("fedseqrec", "stopped", run_dir, total, resume, federation.log.round)
        except StoppedAtOnce:
            federation.kill()
            line = stopped_line(
                "fedseqrec", "killed at once (second interrupt)", run_dir, total, resume, federation.log.round
            )
        signals.ignore()  # nothing runs any more
        federation.close()
        print(line, file=sys.stderr, flush=True)
        return signals.exit_code


class LocalFederation:
    """A private simulation SuperLink and `flwr run --stream` against it, every process tracked."""

    def __init__(self, run_dir: Path, *, stop_grace: float = 5.0, serverapp_grace: float = 20.0, verbose: bool = False):
        self.run_dir = Path(run_dir)
        self.home = Path(tempfile.mkdtemp(prefix="fedseqrec-flwr-"))  # FLWR_HOME: connection, installed app
        self.env = flower_env(self.home)
        self.tracker = ProcessTracker()
        self.log = StreamedLog(log_file=self.run_dir / LOG_FILE, verbose=verbose)
        self.stop_grace, self.serverapp_grace = stop_grace, serverapp_grace
        self._reader: threading.Thread | None = None

    def run(self, run_config: dict, federation_config: str, nodes: int, timeout: float = 120.0) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_file = write_toml(self.home / "run-config.toml", run_config)
        self.start_superlink(timeout)
        command = [
            str(VENV_BIN / "flwr"),
            "run",
            str(stage_app(PROJECT_DIR, self.home / "app")),  # the same FAB, without walking .venv/
            CONNECTION,
            "--stream",
            "--run-config",
            str(config_file),
            "--federation-config",
            federation_config,
        ]
        print(
            f"fedseqrec: {nodes} SuperNodes on a local SuperLink; run folder {self.run_dir} (its log: {LOG_FILE}); "
            "Ctrl-C stops, the same command resumes",
            flush=True,
        )
        proc = self.tracker.start(
            "flwr-run",
            command,
            None,
            self.env,
            PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",
        )
        self._reader = threading.Thread(target=self.log.follow, args=(proc.stdout,), daemon=True)
        self._reader.start()
        code = proc.wait()
        self._reader.join(timeout=30)
        if code != 0:
            return code
        # `flwr run --stream` exits 0 even when the ServerApp failed: ask the SuperLink.
        status = self.run_status()
        if status.get("status") != "finished:completed":
            print(
                f"fedseqrec: error: run {self.log.run_id} ended as {status.get('status') or 'unknown'}: "
                f"{status.get('status-details', '')}; see {self.run_dir / LOG_FILE} and superlink.log there",
                file=sys.stderr,
                flush=True,
            )
            return 1
        return 0

    def start_superlink(self, timeout: float) -> None:
        command = [
            str(VENV_BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
        ]
        log = self.run_dir / "superlink.log"
        for _ in range(5):  # a free port may be taken between the check and the bind: try again
            port = free_port()
            proc = self.tracker.start("superlink", command + ["--port", str(port)], log, self.env, PROJECT_DIR)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _healthy(port):
                    write_connection(self.home, CONNECTION, {"address": f"127.0.0.1:{port}", "insecure": True})
                    return
                time.sleep(0.3)
            if proc.poll() is None:
                raise FedSeqRecError(f"the local SuperLink did not answer on port {port} in {timeout:.0f} s; see {log}")
            self.tracker.stop(["superlink"], self.stop_grace)
        raise FedSeqRecError(f"the local SuperLink exited at start; see {log}")

    def flwr(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.home,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def runs(self) -> list[dict]:
        """`flwr ls` on this SuperLink: one dict per run ('run-id', 'status', 'status-details', ...)."""
        try:
            result = self.flwr("ls", CONNECTION, "--format", "json")
            return json.loads(result.stdout).get("runs", [])
        except (subprocess.TimeoutExpired, ValueError):
            return []

    def run_status(self, wait: float = 60.0) -> dict:
        deadline = time.monotonic() + wait
        while True:
            info = next((r for r in self.runs() if str(r.get("run-id")) == str(self.log.run_id)), {})
            info = {k: str(v) if k.startswith("status") else v for k, v in info.items()}
            if info.get("status", "").startswith("finished") or time.monotonic() > deadline:
                return info
            time.sleep(1.0)

    def stop(self) -> None:
        """Flower's stop for the run, then the ServerApp's process alone, then every other process."""
        self.log.quiet()  # the user asked to stop: the one line that follows is the last output
        if "superlink" in self.tracker.started and self.tracker.started["superlink"].poll() is None:
            run_ids = (
                [self.log.run_id]
                if self.log.run_id
                else [r["run-id"] for r in self.runs() if not str(r.get("status", "")).startswith("finished")]
            )
            for run_id in run_ids:
                try:
                    self.flwr("stop", str(run_id), CONNECTION, timeout=15.0)
                except subprocess.TimeoutExpired:
                    pass
        stop_serverapps(self.tracker, self.serverapp_grace)
        self.tracker.stop(None, self.stop_grace)
        remove_partial_files(self.run_dir)

    def kill(self) -> None:
        self.log.quiet()
        self.tracker.kill()
        wait_gone(self.tracker.processes(), 5.0)
        self.tracker.reap()
        remove_partial_files(self.run_dir)

    def close(self) -> None:
        """Stop whatever still runs (the SuperLink after a completed run) and remove FLWR_HOME."""
        self.tracker.close(self.stop_grace)
        if self._reader is not None:
            self._reader.join(timeout=5)
        shutil.rmtree(self.home, ignore_errors=True)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False
