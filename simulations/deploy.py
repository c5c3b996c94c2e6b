"""A real-process Flower deployment on loopback: TLS SuperLink, authenticated SuperNodes, `flwr run`.

Everything a real deployment runs, on one machine: `flower-superlink` with a TLS certificate from
a local CA and SuperNode authentication, one `flower-supernode` per node with its own data file,
item catalogue, client id and state dir (node config), a `$FLWR_HOME/config.toml` connection
entry for the CLI, and `flwr run <project> <connection> --run-config FILE --stream`.

    python -m simulations.deploy --data ../shared/data/ml-100k/u.data --nodes 2 --rounds 2 --work DIR

Every process started here runs in its own session; on exit (success, error, Ctrl-C, SIGTERM)
a run still going gets Flower's stop (`flwr stop`) and its ServerApp process is ended first, then
every process started and every descendant seen (Flower starts `flower-superexec`,
`flwr-serverapp` and `flwr-clientapp` processes, some detached) get SIGTERM, then SIGKILL after a
grace period (simulations/processes.py). Ctrl-C or SIGTERM ends the demo with exit 130 (143) and one
line: the round reached, the run folder and the command that resumes (the same command); a second
Ctrl-C SIGKILLs everything at once. Logs are written to `<work>/logs/`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import read_toml
from common.errors import ConfigError, FedSeqRecError
from simulations.processes import (
    VENV_BIN,
    ProcessTracker,
    StoppedAtOnce,
    StopSignals,
    become_subreaper,
    flower_env,
    free_port,
    port_open,
    remove_partial_files,
    stop_serverapps,
    toml_value,
    write_connection,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedseqrec-loopback"


class DeploymentError(RuntimeError):
    """A process did not start, a node did not come online, or the run failed or timed out."""


# --------------------------------------------------------------------------------------------
# Certificates and node keys


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path       # give this to every SuperNode (--root-certificates) and the CLI
    server_cert: Path   # SuperLink only
    server_key: Path    # SuperLink only; never leaves the server


def make_certificates(directory: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                      days: int = 365) -> Certificates:
    """A local CA and a SuperLink certificate it signed, valid for `hosts` (IP or DNS SANs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedseqrec local CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA384()))

    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))

    pem = serialization.Encoding.PEM
    out = Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    out.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    out.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(out.server_key, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    # The CA key is not needed after signing; keep it (private) only to sign more server certificates.
    _write_private(directory / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    return out


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path  # stays on the device: flower-supernode --auth-supernode-private-key
    public_key: Path   # goes to the SuperLink operator: flwr supernode register


def make_node_keys(directory: str | Path, name: str) -> NodeKeys:
    """An EC P-384 key pair in OpenSSH format, the kind Flower 1.42 SuperNode authentication takes
    (what `ssh-keygen -t ecdsa -b 384 -N ""` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKeys(directory / name, directory / f"{name}.pub")
    _write_private(out.private_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()))
    out.public_key.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH) + b"\n")
    return out


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


# --------------------------------------------------------------------------------------------
# The deployment


@dataclass(frozen=True)
class NodeSpec:
    """What one SuperNode (one device) is given: its own data, the shared catalogue, its id, its state dir."""
    client_id: int
    data_path: Path
    catalogue_path: Path
    state_dir: Path

    def node_config(self) -> str:
        values = {"data-path": str(Path(self.data_path).resolve()),
                  "catalogue-path": str(Path(self.catalogue_path).resolve()),
                  "client-id": int(self.client_id), "state-dir": str(Path(self.state_dir).resolve())}
        return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def nodes_from_partition(partition_dir: str | Path, work: str | Path) -> list[NodeSpec]:
    """NodeSpecs for the node-<i>.csv files `fedseqrec partition` wrote; state dirs under `work`."""
    partition_dir = Path(partition_dir).resolve()
    files = sorted(partition_dir.glob("node-*.csv"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise DeploymentError(f"{partition_dir}: no node-<i>.csv files (run `fedseqrec partition` first)")
    return [NodeSpec(int(f.stem.split("-")[1]), f, partition_dir / "catalogue.json",
                     Path(work).resolve() / "nodes" / f"node-{f.stem.split('-')[1]}" / "state") for f in files]


class LoopbackDeployment:
    """SuperLink (TLS, SuperNode auth) + one SuperNode per NodeSpec, all on 127.0.0.1, free ports.

    with LoopbackDeployment(work, nodes) as deployment:
        deployment.run({"num-server-rounds": 2, ...})
    """

    def __init__(self, work: str | Path, nodes: Sequence[NodeSpec], *, project: str | Path = PROJECT_DIR,
                 tls: bool = True, node_auth: bool = True, startup_timeout: float = 240.0,
                 stop_grace: float = 15.0, extra_env: Mapping[str, str] | None = None):
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
                self.flwr(["supernode", "register", str(keys.public_key), CONNECTION,
                           "--name", f"node-{node.client_id}"], log_name=f"register-node-{node.client_id}")
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
            (self.logs / "pids.json").write_text(json.dumps(
                {"started": {n: p.pid for n, p in self.tracker.started.items()}, "all": self.tracker.pids(),
                 "alive_after_stop": self.tracker.alive()}, indent=2))

    def _stop_run(self) -> None:
        """`flwr stop` for a run that was started and not seen finished, then its ServerApp process."""
        log = self.logs / "flwr-run.log"
        started = re.findall(r"Successfully started run (\d+)", log.read_text(errors="replace")) if log.exists() else []
        if started and self._finished_run != int(started[-1]) and self._running("superlink"):
            try:
                self.flwr(["stop", started[-1], CONNECTION], "stop-run", timeout=15.0, check=False)
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
        return flower_env(flwr_home, self.extra_env)

    def _start_superlink(self) -> None:
        home = self.work / "flwr-home" / "superlink"
        command = [str(VENV_BIN / "flower-superlink"), "--database", str(self.work / "superlink-state.db"),
                   "--disable-runtime-dependency-installation"]
        if self.tls:
            c = self.certificates
            command += ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                        "--ssl-keyfile", str(c.server_key)]
        else:
            command += ["--insecure"]
        if self.node_auth:
            command += ["--enable-supernode-auth"]
        for _ in range(5):  # a free port may be taken between the check and the bind: try again
            self.port = free_port()
            proc = self.tracker.start("superlink", command + ["--host", "127.0.0.1", "--port", str(self.port)],
                                      self.logs / "superlink.log", self._env(home), self.work)
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if port_open(self.port):
                    return
                time.sleep(0.3)
            if proc.poll() is None:
                raise DeploymentError(f"SuperLink did not open port {self.port} in {self.startup_timeout:.0f} s; "
                                      f"see {self.logs / 'superlink.log'}")
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
        command = [str(VENV_BIN / "flower-supernode"), "--superlink", self.address,
                   "--node-config", node.node_config(), "--host", "127.0.0.1", "--port", str(free_port())]
        if self.tls:
            command += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            command += ["--insecure"]
        if self.node_auth:
            command += ["--auth-supernode-private-key", str(self.node_keys[index].private_key)]
        self.tracker.start(f"supernode-{node.client_id}", command, self.logs / f"supernode-{node.client_id}.log",
                           self._env(node_dir / "flwr-home"), node_dir)

    def flwr(self, args: list[str], log_name: str, timeout: float = 120.0, check: bool = True
             ) -> subprocess.CompletedProcess:
        """A short `flwr` CLI command against this deployment's SuperLink (config in the CLI's FLWR_HOME)."""
        env = self._env(self.cli_home)
        env["COLUMNS"] = "200"
        result = subprocess.run([str(VENV_BIN / "flwr"), *args], capture_output=True, text=True, env=env,
                                cwd=self.work, timeout=timeout, stdin=subprocess.DEVNULL)
        with open(self.logs / f"{log_name}.log", "a") as log:
            log.write(f"$ flwr {' '.join(args)}\n{result.stdout}{result.stderr}\n[exit {result.returncode}]\n")
        if check and result.returncode != 0:
            raise DeploymentError(f"`flwr {' '.join(args)}` failed ({result.returncode}): "
                                  f"{(result.stdout + result.stderr).strip()[-2000:]}")
        return result

    def _wait_for_control_api(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            result = self.flwr(["supernode", "list", CONNECTION, "--format", "json"], "wait-control-api",
                               check=False)
            if result.returncode == 0:
                return
            self._check_running("superlink")
            if time.monotonic() > deadline:
                raise DeploymentError(f"the SuperLink's Control API did not answer in {self.startup_timeout:.0f} s; "
                                      f"see {self.logs}")
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

    def _wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while len(self.online_nodes()) < len(self.nodes):
            for node in self.nodes:
                self._check_running(f"supernode-{node.client_id}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"only {len(self.online_nodes())} of {len(self.nodes)} SuperNodes came online "
                                      f"in {self.startup_timeout:.0f} s; see {self.logs}")
            time.sleep(1.0)

    def _check_running(self, name: str) -> None:
        proc = self.tracker.started[name]
        if proc.poll() is not None:
            raise DeploymentError(f"{name} exited with code {proc.returncode}; see {self.logs / (name + '.log')}")

    # -- runs -----------------------------------------------------------------------------------

    def run(self, run_config: Mapping | str | Path, timeout: float = 3600.0) -> Path:
        """`flwr run <project> <connection> --run-config FILE --stream`; returns the run log path.

        Raises DeploymentError when flwr run fails or does not finish within `timeout` seconds."""
        if isinstance(run_config, Mapping):
            path = self.work / "run-config.toml"
            path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()))
        else:
            path = Path(run_config).resolve()
        log = self.logs / "flwr-run.log"
        command = [str(VENV_BIN / "flwr"), "run", str(self.project), CONNECTION, "--run-config", str(path), "--stream"]
        env = self._env(self.cli_home)
        env["COLUMNS"] = "200"
        proc = self.tracker.start("flwr-run", command, log, env, self.work)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.tracker.stop(["flwr-run"], self.stop_grace)
            raise DeploymentError(f"flwr run did not finish in {timeout:.0f} s; see {log}") from None
        if code != 0:
            raise DeploymentError(f"flwr run exited with code {code}; see {log}")
        # `flwr run --stream` exits 0 even when the ServerApp failed: ask the SuperLink.
        started = re.findall(r"Successfully started run (\d+)", log.read_text(errors="replace"))
        if not started:
            raise DeploymentError(f"flwr run did not start a run; see {log}")
        self.run_id = int(started[-1])  # the log is appended to: the last run is this one
        info = self.run_info(self.run_id)
        deadline = time.monotonic() + 60.0
        while not info.get("status", "").startswith("finished") and time.monotonic() < deadline:
            time.sleep(1.0)
            info = self.run_info(self.run_id)
        if info.get("status", "").startswith("finished"):
            self._finished_run = self.run_id
        if info.get("status") != "finished:completed":
            raise DeploymentError(f"run {self.run_id} ended as {info.get('status') or 'unknown'}: "
                                  f"{info.get('status-details', '')}; see {log}")
        return log

    def run_info(self, run_id: int) -> dict:
        """`flwr ls --run-id` as a dict: 'status' ('running', 'finished:completed', ...), 'status-details', ..."""
        result = self.flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], "run-status", check=False)
        try:
            runs = json.loads(result.stdout).get("runs", [])
        except ValueError:
            return {}
        return {k: str(v) if k.startswith("status") else v for k, v in runs[0].items()} if runs else {}


# --------------------------------------------------------------------------------------------
# The whole demo


def demo(data: str, nodes: int, rounds: int, work: Path, *, model: str = "sasrec",
         overrides: Mapping | None = None, tls: bool = True, node_auth: bool = True,
         timeout: float = 3600.0, where: str = "simulations.deploy") -> dict:
    """Partition `data` into per-node files, deploy on loopback, run `rounds` rounds, return summary.json."""
    from common.config import RunConfig
    from simulations.deployment_data import write_node_files

    work = Path(work).resolve()
    data_arg = str(Path(data).resolve()) if Path(data).exists() else data  # a file path or a named dataset
    run_config = {"data": data_arg, "model": model, "num-server-rounds": rounds, "clients-per-round": nodes,
                  "out-dir": str(work / "run"), "num-threads": 1, **(overrides or {})}
    config = RunConfig.from_flat(run_config, where=where)
    partition_dir = work / "partition"
    write_node_files(config, partition_dir, nodes)
    # From here on only the devices hold interactions: the server gets the item catalogue, and the
    # clients rank their own held-out items (federated evaluation).
    run_config.update({"data": "", "catalogue-path": str(partition_dir / "catalogue.json"),
                       "federated-evaluation": True})
    specs = nodes_from_partition(partition_dir, work)
    with LoopbackDeployment(work, specs, tls=tls, node_auth=node_auth) as deployment:
        print(f"deploy: SuperLink on {deployment.address} (tls={tls}, node auth={node_auth}), "
              f"{len(specs)} SuperNodes online; logs in {deployment.logs}", flush=True)
        deployment.run(run_config, timeout=timeout)
    summary_path = work / "run" / "summary.json"
    if not summary_path.exists():
        raise DeploymentError(f"the run ended without {summary_path}; see {work / 'logs'}")
    return json.loads(summary_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the full interactions file (or ml-100k, ml-1m, synthetic)")
    parser.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (devices)")
    parser.add_argument("--rounds", type=int, default=2, help="num-server-rounds")
    parser.add_argument("--work", help="work dir: partition, certificates, keys, logs, run results")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--run-config", help="TOML of further run-config overrides")
    parser.add_argument("--no-node-auth", action="store_true", help="skip SuperNode authentication")
    parser.add_argument("--insecure", action="store_true", help="no TLS (and no node auth)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take")
    tools = parser.add_argument_group("for a real deployment (nothing is started)")
    tools.add_argument("--make-certificates", metavar="DIR",
                       help="write ca.crt, server.pem, server.key (and ca.key) for the SuperLink's --host names")
    tools.add_argument("--host", action="append", help="SuperLink host name or IP for the certificate (repeat)")
    tools.add_argument("--make-node-key", metavar="PATH",
                       help="write an EC P-384 OpenSSH key pair PATH and PATH.pub for one SuperNode")
    args = parser.parse_args(argv)
    if args.make_certificates or args.make_node_key:
        if args.make_certificates:
            certs = make_certificates(args.make_certificates, tuple(args.host or ("127.0.0.1", "localhost")))
            print(f"CA certificate (give to every SuperNode and the flwr CLI): {certs.ca_cert}\n"
                  f"SuperLink certificate and key: {certs.server_cert} {certs.server_key}")
        if args.make_node_key:
            path = Path(args.make_node_key)
            keys = make_node_keys(path.parent, path.name)
            print(f"private key (stays on the device): {keys.private_key}\n"
                  f"public key (register it: flwr supernode register {keys.public_key} <connection>): "
                  f"{keys.public_key}")
        return 0
    if not args.data or not args.work:
        parser.error("--data and --work are required for the loopback demo")
    try:
        overrides = read_toml(args.run_config) if args.run_config else {}
    except ConfigError as exc:  # one line, no traceback: a missing or unreadable file
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    total = int(overrides.get("num-server-rounds", args.rounds))
    resume = shlex.join(["python", "-m", "simulations.deploy", *(sys.argv[1:] if argv is None else argv)])
    become_subreaper()  # orphans of the processes started stay in this process's tree
    with StopSignals() as signals:
        try:
            try:
                summary = demo(args.data, args.nodes, args.rounds, work, model=args.model, overrides=overrides,
                               tls=not args.insecure, node_auth=not (args.insecure or args.no_node_auth),
                               timeout=args.timeout, where=args.run_config or "simulations.deploy")
            except DeploymentError as exc:
                print(f"deploy: error: {exc}", file=sys.stderr)
                return 1
            except FedSeqRecError as exc:  # a bad run-config key or value: one line, before anything starts
                print(f"deploy: error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:  # every process was stopped on the way out of the deployment
                how = "stopped"
            else:
                print(json.dumps({"rounds": summary["rounds"], "validation": summary["validation"],
                                  "test": summary["test"], "out": str(work / "run")}, indent=2))
                return 0
        except StoppedAtOnce:
            how = "killed at once (second interrupt)"
        signals.ignore()  # nothing runs any more
        remove_partial_files(work / "run")
        from simulations.federate import stopped_line
        print(stopped_line("deploy", how, work / "run", total, resume), file=sys.stderr, flush=True)
        return signals.exit_code


if __name__ == "__main__":
    sys.exit(main())
