"""The loopback deployment demo (and the tools for a real deployment's certificates and node keys).

It partitions the data into per-node files, starts a real-process deployment on loopback
(fedseqrec/launch/loopback.py: TLS SuperLink, authenticated SuperNodes, `flwr run`) and runs the rounds.

    python -m fedseqrec.launch.deploy --data ../shared/data/ml-100k/u.data --nodes 2 --rounds 2 --work DIR

Every process started here runs in its own session; on exit (success, error, Ctrl-C, SIGTERM)
a run still going gets Flower's stop (`flwr stop`) and its ServerApp process is ended first, then
every process started and every descendant seen (Flower starts `flower-superexec`,
`flwr-serverapp` and `flwr-clientapp` processes, some detached) get SIGTERM, then SIGKILL after a
grace period (fedseqrec/launch/processes.py). Ctrl-C or SIGTERM ends the demo with exit 130 (143) and one
line: the round reached, the run folder and the command that resumes (the same command); a second
Ctrl-C SIGKILLs everything at once. Logs are written to `<work>/logs/`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from common.config import read_toml
from common.errors import ConfigError, FedSeqRecError
from fedseqrec.launch.credentials import make_certificates, make_node_keys
from fedseqrec.launch.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition
from fedseqrec.launch.processes import StoppedAtOnce, StopSignals, become_subreaper, remove_partial_files


def demo(
    data: str,
    nodes: int,
    rounds: int,
    work: Path,
    *,
    model: str = "sasrec",
    overrides: Mapping | None = None,
    tls: bool = True,
    node_auth: bool = True,
    timeout: float = 3600.0,
    where: str = "fedseqrec.launch.deploy",
    poll_interval: float | None = None,
    heartbeat_interval: float | None = None,
) -> dict:
    """Partition `data` into per-node files, deploy on loopback, run `rounds` rounds, return summary.json."""
    from common.config import RunConfig
    from fedseqrec.deployment_data import write_node_files

    work = Path(work).resolve()
    data_arg = str(Path(data).resolve()) if Path(data).exists() else data  # a file path or a named dataset
    run_config = {
        "data": data_arg,
        "model": model,
        "num-server-rounds": rounds,
        "clients-per-round": nodes,
        "out-dir": str(work / "run"),
        "num-threads": 1,
        **(overrides or {}),
    }
    config = RunConfig.from_flat(run_config, where=where)
    partition_dir = work / "partition"
    write_node_files(config, partition_dir, nodes)
    # From here on only the devices hold interactions: the server gets the item catalogue, and the
    # clients rank their own held-out items (federated evaluation).
    run_config.update(
        {"data": "", "catalogue-path": str(partition_dir / "catalogue.json"), "federated-evaluation": True}
    )
    specs = nodes_from_partition(partition_dir, work)
    timings = {"poll_interval": poll_interval, "heartbeat_interval": heartbeat_interval}
    with LoopbackDeployment(work, specs, tls=tls, node_auth=node_auth, **timings) as deployment:
        print(
            f"deploy: SuperLink on {deployment.address} (tls={tls}, node auth={node_auth}), "
            f"{len(specs)} SuperNodes online; logs in {deployment.logs}",
            flush=True,
        )
        deployment.run(run_config, timeout=timeout)
    summary_path = work / "run" / "summary.json"
    if not summary_path.exists():
        raise DeploymentError(f"the run ended without {summary_path}; see {work / 'logs'}")
    return json.loads(summary_path.read_text())


def _seconds(low: float, high: float):
    """An argparse type: seconds in [low, high], or an error that names the range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} s is outside {low:g}-{high:g} s")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedseqrec.launch.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", help="the full interactions file (or ml-100k, ml-1m, synthetic)")
    parser.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (devices)")
    parser.add_argument("--rounds", type=int, default=2, help="num-server-rounds")
    parser.add_argument("--work", help="work dir: partition, certificates, keys, logs, run results")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--run-config", help="TOML of further run-config overrides")
    parser.add_argument("--no-node-auth", action="store_true", help="skip SuperNode authentication")
    parser.add_argument("--insecure", action="store_true", help="no TLS (and no node auth)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take")
    parser.add_argument(
        "--poll-interval",
        type=_seconds(0.01, 60.0),
        metavar="S",
        help="seconds between the SuperNodes' and SuperExecs' looks for work (Flower's own: 3 s and 1 s); "
        "shorter waits less and costs each process a little CPU all run long",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_seconds(10.0, 1800.0),
        metavar="S",
        help="the heartbeat the SuperNodes declare, 10-1800 s (Flower's own: 30 s): a dead device is seen "
        "offline after two missed beats",
    )
    tools = parser.add_argument_group("for a real deployment (nothing is started)")
    tools.add_argument(
        "--make-certificates",
        metavar="DIR",
        help="write ca.crt, server.pem, server.key (and ca.key) for the SuperLink's --host names",
    )
    tools.add_argument("--host", action="append", help="SuperLink host name or IP for the certificate (repeat)")
    tools.add_argument(
        "--make-node-key", metavar="PATH", help="write an EC P-384 OpenSSH key pair PATH and PATH.pub for one SuperNode"
    )
    args = parser.parse_args(argv)
    if args.make_certificates or args.make_node_key:
        if args.make_certificates:
            certs = make_certificates(args.make_certificates, tuple(args.host or ("127.0.0.1", "localhost")))
            print(
                f"CA certificate (give to every SuperNode and the flwr CLI): {certs.ca_cert}\n"
                f"SuperLink certificate and key: {certs.server_cert} {certs.server_key}"
            )
        if args.make_node_key:
            path = Path(args.make_node_key)
            keys = make_node_keys(path.parent, path.name)
            print(
                f"private key (stays on the device): {keys.private_key}\n"
                f"public key (register it: flwr supernode register {keys.public_key} <connection>): "
                f"{keys.public_key}"
            )
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
    resume = shlex.join(["python", "-m", "fedseqrec.launch.deploy", *(sys.argv[1:] if argv is None else argv)])
    become_subreaper()  # orphans of the processes started stay in this process's tree
    with StopSignals() as signals:
        try:
            try:
                summary = demo(
                    args.data,
                    args.nodes,
                    args.rounds,
                    work,
                    model=args.model,
                    overrides=overrides,
                    tls=not args.insecure,
                    node_auth=not (args.insecure or args.no_node_auth),
                    timeout=args.timeout,
                    where=args.run_config or "fedseqrec.launch.deploy",
                    poll_interval=args.poll_interval,
                    heartbeat_interval=args.heartbeat_interval,
                )
            except DeploymentError as exc:
                print(f"deploy: error: {exc}", file=sys.stderr)
                return 1
            except FedSeqRecError as exc:  # a bad run-config key or value: one line, before anything starts
                print(f"deploy: error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:  # every process was stopped on the way out of the deployment
                how = "stopped"
            else:
                print(
                    json.dumps(
                        {
                            "rounds": summary["rounds"],
                            "validation": summary["validation"],
                            "test": summary["test"],
                            "out": str(work / "run"),
                        },
                        indent=2,
                    )
                )
                return 0
        except StoppedAtOnce:
            how = "killed at once (second interrupt)"
        signals.ignore()  # nothing runs any more
        remove_partial_files(work / "run")
        from fedseqrec.launch.federate import stopped_line

        print(stopped_line("deploy", how, work / "run", total, resume), file=sys.stderr, flush=True)
        return signals.exit_code


if __name__ == "__main__":
    sys.exit(main())
