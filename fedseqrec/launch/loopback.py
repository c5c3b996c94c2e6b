"""A real-process Flower deployment on loopback: TLS SuperLink, authenticated SuperNodes, `flwr run`.
Everything a real deployment runs, on one machine: `flower-superlink` with a TLS certificate from
a local CA and SuperNode authentication, one `flower-supernode` per node with its own data file,
item catalogue, client id and state dir (node config), a `$FLWR_HOME/config.toml` connection
entry for the CLI, and `flwr run <project> <connection> --run-config FILE --stream`.
Every process started here runs in its own session and is tracked by pid (fedseqrec/launch/processes.py,
the same tracker `fedseqrec federate` uses); on exit (success, error, Ctrl-C, SIGTERM) a run still
going gets Flower's stop (`flwr stop`) and its ServerApp process is ended first, then every process
started and every descendant seen (Flower starts `flower-superexec`, `flwr-serverapp` and
`flwr-clientapp` processes, some detached) get SIGTERM, then SIGKILL after a grace period. Logs are
written to `<work>/logs/`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedseqrec.launch.app_files import stage_app
from fedseqrec.launch.credentials import Certificates, NodeKeys, make_certificates, make_node_keys
from fedseqrec.launch.processes import (
    SUPEREXEC_POLL_ENV,
    VENV_BIN,
    ProcessTracker,
    flower_env,
    free_port,
    port_open,
    stop_serverapps,
    toml_value,
    wait_gone,
    write_connection,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedseqrec-loopback"
HEARTBEAT_DEFAULT_INTERVAL = 30.0  # a SuperNode's, when not given (flwr.common.constant)
HEARTBEAT_PATIENCE = 2  # the SuperLink sees a node offline this many intervals after its last heartbeat (flwr)
# What a SuperNode logs once the SuperLink has let it in (flwr/supernode/start_client_internal.py)
NODE_ADMITTED = "SuperNode ID: "
ADMISSION_WAIT = 60.0  # s: how long to wait for that line before asking the SuperLink instead


class DeploymentError(RuntimeError):
    """A process did not start, a node did not come online, or the run failed or timed out."""


@dataclass(frozen=True)
class NodeSpec:
    """What one SuperNode (one device) is given: its own data, the shared catalogue, its id, its state dir."""

    client_id: int
    data_path: Path
    catalogue_path: Path
    state_dir: Path

    def node_config(self) -> str:
        values = {
            "data-path": str(Path(self.data_path).resolve()),
            "catalogue-path": str(Path(self.catalogue_path).resolve()),
            "client-id": int(self.client_id),
            "state-dir": str(Path(self.state_dir).resolve()),
        }
        return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def nodes_from_partition(partition_dir: str | Path, work: str | Path) -> list[NodeSpec]:
    """NodeSpecs for the node-<i>.csv files `fedseqrec partition` wrote; state dirs under `work`."""
    partition_dir = Path(partition_dir).resolve()
    files = sorted(partition_dir.glob("node-*.csv"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise DeploymentError(f"{partition_dir}: no node-<i>.csv files (run `fedseqrec partition` first)")
    return [
        NodeSpec(
            int(f.stem.split("-")[1]),
            f,
            partition_dir / "catalogue.json",
            Path(work).resolve() / "nodes" / f"node-{f.stem.split('-')[1]}" / "state",
        )
        for f in files
    ]


class LoopbackDeployment:
    """SuperLink (TLS, SuperNode auth) + one SuperNode per NodeSpec, all on 127.0.0.1, free ports.

    with LoopbackDeployment(work, nodes) as deployment:
        deployment.run({"num-server-rounds": 2, ...})
    """

    def __init__(
        self,
        work: str | Path,
        nodes: Sequence[NodeSpec],
        *,
        project: str | Path = PROJECT_DIR,
        tls: bool = True,
        node_auth: bool = True,
        startup_timeout: float = 240.0,
        stop_grace: float = 15.0,
        extra_env: Mapping[str, str] | None = None,
        state_file: bool = True,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
        turns: int | None = None,
    ):
        if not nodes:
            raise ValueError("a deployment needs at least one node")
        if node_auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.work = Path(work).resolve()
        self.nodes = list(nodes)
        self.project = Path(project).resolve()
        self.tls, self.node_auth = tls, node_auth
        self.startup_timeout, self.stop_grace = startup_timeout, stop_grace
        self.extra_env = dict(extra_env or {})
        # The SuperLink's state in an SQLite file (it survives a SuperLink restart), else in memory.
        self.state_file = state_file
        # Seconds between looks for work of every SuperNode and SuperExec, and the heartbeat the
        # SuperNodes declare (a dead one is seen offline after two missed beats). None: Flower's own
        # (3 s SuperNode, 1 s SuperExec; 30 s). Shorter looks cost each process a little CPU all run
        # long (a SuperExec at 0.1 s: ~5% of a core); tests and drills trade that for waiting less.
        self.poll_interval, self.heartbeat_interval = poll_interval, heartbeat_interval
        self._killed_at: dict[int, float] = {}  # client id -> when sigkill_node killed its SuperNode
        self._log_from: dict[int, int] = {}  # client id -> its log's size when its SuperNode last started
        # At most `turns` ClientApps of all the SuperNodes at once (fedseqrec/launch/supernode.py
        # `take_turns`): one machine standing in for many devices. None: no limit.
        self.turns = turns
        self.logs = self.work / "logs"
        self.cli_home = self.work / "flwr-home" / "cli"
        self.certificates: Certificates | None = None
        self.node_keys: list[NodeKeys] = []
        self.port: int | None = None
        self.tracker: ProcessTracker | None = None
        self.run_id: int | None = None
        self._finished_run: int | None = None  # the last run seen finished (nothing to stop)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LoopbackDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tracker = ProcessTracker()
        if self.tls:
            self.certificates = make_certificates(self.work / "certificates")
        if self.node_auth:
            self.node_keys = [make_node_keys(self.work / "keys", f"node-{node.client_id}") for node in self.nodes]
        self._start_superlink()
        self._write_cli_config()
        self._wait_for_control_api()
        if self.node_auth:
            for node, keys in zip(self.nodes, self.node_keys):
                self.flwr(
                    ["supernode", "register", str(keys.public_key), CONNECTION, "--name", f"node-{node.client_id}"],
                    log_name=f"register-node-{node.client_id}",
                )
        for index, node in enumerate(self.nodes):
            self._start_supernode(index, node)
        self._wait_for_nodes()

    def stop(self) -> None:
        """Stop a run still going (Flower's stop, then its ServerApp process alone), then every process
        started and its descendants; safe to call twice. Interrupted itself (a second Ctrl-C, an
        error), it SIGKILLs every process at once and re-raises."""
        if self.tracker is None:
            return
        try:
            self._stop_run()
            self.tracker.close(self.stop_grace)
        except BaseException:
            self.tracker.kill()
            self.tracker.close(0.0)
            raise
        finally:
            (self.logs / "pids.json").write_text(
                json.dumps(
                    {
                        "started": {n: p.pid for n, p in self.tracker.started.items()},
                        "all": self.tracker.pids(),
                        "alive_after_stop": self.tracker.alive(),
                    },
                    indent=2,
                )
            )

    def _stop_run(self) -> None:
        """`flwr stop` for a run that was started and not seen finished, then its ServerApp process."""
        run_id = self.last_run_id()
        if run_id is not None and self._finished_run != run_id and self._running("superlink"):
            try:
                self.flwr(["stop", str(run_id), CONNECTION], "stop-run", timeout=15.0, check=False)
            except subprocess.TimeoutExpired:
                pass
        stop_serverapps(self.tracker, self.stop_grace)

    def _running(self, name: str) -> bool:
        return name in self.tracker.started and self.tracker.started[name].poll() is None

    def pids(self) -> list[int]:
        return self.tracker.pids() if self.tracker else []

    def alive(self) -> list[int]:
        return self.tracker.alive() if self.tracker else []

    # -- processes ----------------------------------------------------------------------------

    def _env(self, flwr_home: Path) -> dict[str, str]:
        flwr_home.mkdir(parents=True, exist_ok=True)
        polls = {} if self.poll_interval is None else {SUPEREXEC_POLL_ENV: str(self.poll_interval)}
        return flower_env(flwr_home, {**polls, **self.extra_env})

    def _start_superlink(self, port: int | None = None) -> None:
        home = self.work / "flwr-home" / "superlink"
        command = [str(VENV_BIN / "flower-superlink"), "--disable-runtime-dependency-installation"]
        if self.state_file:
            command += ["--database", str(self.work / "superlink-state.db")]
        if self.tls:
            c = self.certificates
            command += [
                "--ssl-ca-certfile",
                str(c.ca_cert),
                "--ssl-certfile",
                str(c.server_cert),
                "--ssl-keyfile",
                str(c.server_key),
            ]
        else:
            command += ["--insecure"]
        if self.node_auth:
            command += ["--enable-supernode-auth"]
        for _ in range(5):  # a free port may be taken between the check and the bind: try again
            self.port = port or free_port()
            proc = self.tracker.start(
                "superlink",
                command + ["--host", "127.0.0.1", "--port", str(self.port)],
                self.logs / "superlink.log",
                self._env(home),
                self.work,
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if port_open(self.port):
                    return
                time.sleep(0.3)
            if proc.poll() is None:
                raise DeploymentError(
                    f"SuperLink did not open port {self.port} in {self.startup_timeout:.0f} s; "
                    f"see {self.logs / 'superlink.log'}"
                )
            self.tracker.stop(["superlink"], self.stop_grace)
        raise DeploymentError(f"SuperLink exited at start; see {self.logs / 'superlink.log'}")

    def _write_cli_config(self) -> None:
        entry = {"address": self.address}
        if self.tls:
            entry["root-certificates"] = str(self.certificates.ca_cert)
        else:
            entry["insecure"] = True
        write_connection(self.cli_home, CONNECTION, entry)

    def _start_supernode(self, index: int, node: NodeSpec) -> None:
        Path(node.state_dir).mkdir(parents=True, exist_ok=True)
        node_dir = self.work / "nodes" / f"node-{node.client_id}"
        command = [*self._supernode_program(), "--superlink", self.address]
        command += [
            "--node-config",
            node.node_config(),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
        if self.tls:
            command += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            command += ["--insecure"]
        if self.node_auth:
            command += ["--auth-supernode-private-key", str(self.node_keys[index].private_key)]
        log = self.logs / f"supernode-{node.client_id}.log"
        self._log_from[node.client_id] = log.stat().st_size if log.exists() else 0
        self.tracker.start(
            f"supernode-{node.client_id}",
            command,
            log,
            self._env(node_dir / "flwr-home"),
            node_dir,
        )

    def _supernode_program(self) -> list[str]:
        """Flower's SuperNode, through fedseqrec/launch/supernode.py where a timing is set."""
        if self.poll_interval is None and self.heartbeat_interval is None and self.turns is None:
            return [str(VENV_BIN / "flower-supernode")]
        program = [str(VENV_BIN / "python"), "-m", "fedseqrec.launch.supernode"]
        if self.poll_interval is not None:
            program += ["--poll-interval", str(self.poll_interval)]
        if self.heartbeat_interval is not None:
            program += ["--heartbeat-interval", str(self.heartbeat_interval)]
        if self.turns is not None:
            program += ["--turns", str(self.turns), "--turns-dir", str(self.work / "turns")]
        return program

    def flwr(
        self, args: list[str], log_name: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        """A short `flwr` CLI command against this deployment's SuperLink (config in the CLI's FLWR_HOME)."""
        env = self._env(self.cli_home)
        env["COLUMNS"] = "200"
        result = subprocess.run(
            [str(VENV_BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.work,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        with open(self.logs / f"{log_name}.log", "a") as log:
            log.write(f"$ flwr {' '.join(args)}\n{result.stdout}{result.stderr}\n[exit {result.returncode}]\n")
        if check and result.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed ({result.returncode}): "
                f"{(result.stdout + result.stderr).strip()[-2000:]}"
            )
        return result

    def _wait_for_control_api(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            result = self.flwr(["supernode", "list", CONNECTION, "--format", "json"], "wait-control-api", check=False)
            if result.returncode == 0:
                return
            self._check_running("superlink")
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink's Control API did not answer in {self.startup_timeout:.0f} s; see {self.logs}"
                )
            time.sleep(1.0)

    def online_nodes(self) -> list[dict]:
        result = self.flwr(["supernode", "list", CONNECTION, "--format", "json"], "wait-nodes", check=False)
        if result.returncode != 0:
            return []
        try:
            listing = json.loads(result.stdout)
        except ValueError:
            return []
        return [n for n in listing.get("nodes", []) if str(n.get("status", "")).lower() == "online"]

    def _admitted(self, client_id: int) -> bool:
        """Has the SuperNode started last for `client_id` logged that the SuperLink let it in?"""
        with open(self.logs / f"supernode-{client_id}.log", "rb") as log:
            log.seek(self._log_from.get(client_id, 0))
            return NODE_ADMITTED.encode() in log.read()

    def _wait_for_nodes(self) -> None:
        """Until the SuperLink lists every node online. Each ask is a `flwr` process (~1.4 s of CPU),
        so first wait for the SuperNodes just started to log their admission (a file read), for at
        most `ADMISSION_WAIT` s (a Flower that logs otherwise falls back to asking)."""
        deadline = time.monotonic() + self.startup_timeout
        pending = set(self._log_from)
        admission_deadline = time.monotonic() + min(ADMISSION_WAIT, self.startup_timeout)
        while pending and time.monotonic() < admission_deadline:
            for client_id in list(pending):
                self._check_running(f"supernode-{client_id}")
                if self._admitted(client_id):
                    pending.discard(client_id)
            time.sleep(0.2)
        self._log_from.clear()
        while len(self.online_nodes()) < len(self.nodes):
            for node in self.nodes:
                self._check_running(f"supernode-{node.client_id}")
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"only {len(self.online_nodes())} of {len(self.nodes)} SuperNodes came online "
                    f"in {self.startup_timeout:.0f} s; see {self.logs}"
                )
            time.sleep(1.0)

    def _check_running(self, name: str) -> None:
        proc = self.tracker.started[name]
        if proc.poll() is not None:
            raise DeploymentError(f"{name} exited with code {proc.returncode}; see {self.logs / (name + '.log')}")

    # -- runs -----------------------------------------------------------------------------------

    def run(self, run_config: Mapping | str | Path, timeout: float = 3600.0) -> Path:
        """`flwr run <project> <connection> --run-config FILE --stream`; returns the run log path.

        Raises DeploymentError when flwr run fails or does not finish within `timeout` seconds."""
        return self.wait(self.submit(run_config), timeout)

    def submit(self, run_config: Mapping | str | Path) -> subprocess.Popen:
        """Start `flwr run ... --stream` and return at once (`wait` follows it to the end)."""
        if isinstance(run_config, Mapping):
            path = self.work / "run-config.toml"
            path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()))
        else:
            path = Path(run_config).resolve()
        app = stage_app(self.project, self.work / "app")  # the same FAB, without walking .venv/
        command = [str(VENV_BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", str(path), "--stream"]
        env = self._env(self.cli_home)
        env["COLUMNS"] = "200"
        return self.tracker.start("flwr-run", command, self.logs / "flwr-run.log", env, self.work)

    def wait(self, proc: subprocess.Popen, timeout: float = 3600.0) -> Path:
        log = self.logs / "flwr-run.log"
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.tracker.stop(["flwr-run"], self.stop_grace)
            raise DeploymentError(f"flwr run did not finish in {timeout:.0f} s; see {log}") from None
        if code != 0:
            raise DeploymentError(f"flwr run exited with code {code}; see {log}")
        # `flwr run --stream` exits 0 even when the ServerApp failed: ask the SuperLink.
        self.run_id = self.last_run_id()
        if self.run_id is None:
            raise DeploymentError(f"flwr run did not start a run; see {log}")
        info = self.run_info(self.run_id)
        deadline = time.monotonic() + 60.0
        while not info.get("status", "").startswith("finished") and time.monotonic() < deadline:
            time.sleep(1.0)
            info = self.run_info(self.run_id)
        if info.get("status", "").startswith("finished"):
            self._finished_run = self.run_id
        if info.get("status") != "finished:completed":
            raise DeploymentError(
                f"run {self.run_id} ended as {info.get('status') or 'unknown'}: "
                f"{info.get('status-details', '')}; see {log}"
            )
        return log

    def last_run_id(self) -> int | None:
        """The run the latest `flwr run` started (the log is appended to: the last one is it)."""
        log = self.logs / "flwr-run.log"
        started = re.findall(r"Successfully started run (\d+)", log.read_text(errors="replace")) if log.exists() else []
        return int(started[-1]) if started else None

    # -- crashes (reliability tests) --------------------------------------------------------------

    def sigkill(self, program: str) -> list[int]:
        """SIGKILL, with no chance to clean up, the tracked processes running `program`
        (`flwr-serverapp`, `flower-superlink`, `flower-supernode`); their pids."""
        self.tracker.snapshot()
        procs = self.tracker.running(program)
        for proc in procs:
            proc.kill()
        wait_gone(procs, 10.0)
        self.tracker.reap()
        return [p.pid for p in procs]

    def sigkill_node(self, client_id: int) -> list[int]:
        """A device dies: SIGKILL its SuperNode and everything the SuperNode started (a ClientApp
        mid-training included), with no chance to clean up; their pids."""
        self.tracker.snapshot()
        root = self.tracker.started[f"supernode-{client_id}"]
        try:
            procs = [psutil.Process(root.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._killed_at[client_id] = time.monotonic()
        wait_gone(procs, 10.0)
        self.tracker.reap()
        return [p.pid for p in procs]

    def restart_node(self, client_id: int) -> None:
        """Start a killed device's SuperNode again, with its keys, data and state folder; wait until
        every SuperNode is online. The SuperLink refuses a node whose key it still sees online, so this
        first waits until the dead one misses two heartbeats (2 x `heartbeat_interval`, Flower's 30 s by default)."""
        index = next(i for i, node in enumerate(self.nodes) if node.client_id == client_id)
        deadline = time.monotonic() + self.startup_timeout
        # The SuperLink sees a node offline HEARTBEAT_PATIENCE intervals after its last heartbeat, which
        # came before the kill: by then at the latest. Each earlier ask costs a `flwr` process (~1.4 s
        # of CPU) and mostly answers "still online".
        interval = self.heartbeat_interval or HEARTBEAT_DEFAULT_INTERVAL
        killed_at = self._killed_at.pop(client_id, None)
        if killed_at is not None:
            time.sleep(max(0.0, killed_at + HEARTBEAT_PATIENCE * interval - time.monotonic()))
        while len(self.online_nodes()) >= len(self.nodes):
            if time.monotonic() > deadline:
                raise DeploymentError(f"the SuperLink still lists node {client_id} online; see {self.logs}")
            time.sleep(1.0)
        self._start_supernode(index, self.nodes[index])
        self._wait_for_nodes()

    def abandon_run(self) -> None:
        """After a crash: stop following the run (`flwr run --stream`), and stop it on the SuperLink."""
        self.tracker.stop(["flwr-run"], self.stop_grace)
        run_id = self.last_run_id()
        if run_id is not None and self._running("superlink"):
            self.flwr(["stop", str(run_id), CONNECTION], "stop-run", timeout=30.0, check=False)
        stop_serverapps(self.tracker, self.stop_grace)

    def restart_superlink(self) -> None:
        """A SuperLink SIGKILLed and started again on its port and state database; the SuperNodes
        reconnect by themselves."""
        self.sigkill("flower-superlink")
        port = self.port
        self._start_superlink(port=port)
        self._wait_for_control_api()
        self._wait_for_nodes()

    def run_info(self, run_id: int) -> dict:
        """`flwr ls --run-id` as a dict: 'status' ('running', 'finished:completed', ...), 'status-details', ..."""
        result = self.flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], "run-status", check=False)
        try:
            runs = json.loads(result.stdout).get("runs", [])
        except ValueError:
            return {}
        return {k: str(v) if k.startswith("status") else v for k, v in runs[0].items()} if runs else {}
