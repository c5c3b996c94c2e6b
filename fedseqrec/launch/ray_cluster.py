"""`fedseqrec federate --ray-address`: Flower's simulation on an existing Ray cluster, not on one we write.

Flower's Ray backend (flwr/server/superlink/fleet/vce/backend/raybackend.py) calls
`ray.init(**init_args)` in the `flwr-simulation` process. Flower 1.42's federation config has no
address key (its init args are num-cpus, num-gpus, logging-level and log-to-driver), and
`ray.init()` without an address takes Ray's own RAY_ADDRESS variable (ray/_private/worker.py): so
the address travels as RAY_ADDRESS in the SuperLink's environment, which the SuperExec and
`flwr-simulation` inherit. That is the road Flower documents for multi-node simulations
(`ray start --head`, `ray start --address=...` on the other nodes, then run from the head node);
here it is explicit. Flower then sizes its actor pool node by node (floor(node CPUs / CPUs per
client), flwr/simulation/ray_transport/ray_actor.py) and Ray places each actor where its CPUs are
free, so the cohort engine's SuperNode messages (its chunks of users) run on every node.

Without `--ray-address` a run stays on this machine: RAY_ADDRESS=local, because Ray's default would
otherwise join whatever cluster a `ray start` on this machine last wrote to /tmp/ray.

The address is checked before any Flower process starts, in one line: a TCP connect first (quick),
then a short-lived Ray driver in a child process (Ray stays out of this process) that must connect
and report the cluster's nodes. That driver runs where `flwr-simulation` will run, so a machine
that is not a node of the cluster, or a different Ray or Python, fails here too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass

from common.errors import ConfigError, brief

LOCAL = "local"  # RAY_ADDRESS for a run on this machine alone: Ray starts a private instance

# Runs in a child process: connect as a driver, report the alive nodes, leave.
_PROBE = """
import json, sys
import ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
alive = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": len(alive), "cpus": sum(n["Resources"].get("CPU", 0) for n in alive)}))
ray.shutdown()
"""


@dataclass(frozen=True)
class RayCluster:
    """What the probe saw: the address as given (host:port), its alive nodes and their CPUs."""

    address: str
    nodes: int
    cpus: float

    def actors(self, cpus_per_client: float) -> int:
        """How many SuperNode actors Flower's pool can hold at most (the per-node floor can make it fewer)."""
        return int(self.cpus // cpus_per_client)


def parse_address(address: str) -> tuple[str, int]:
    """host:port of a Ray cluster's head (what `ray start --head` prints), or a one-line error."""
    what = f"--ray-address {address!r}"
    if "://" in address:
        raise ConfigError(
            f"{what}: give the head's GCS address host:port (what `ray start --head` prints), "
            "not a Ray Client ray:// URL; run fedseqrec on a node of the cluster"
        )
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: not host:port; give the address `ray start --head` printed, e.g. 10.0.0.5:6379")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = 90.0) -> RayCluster:
    """The cluster at `address`, reached from this machine as `flwr-simulation` will reach it."""
    host, port = parse_address(address)
    what = f"--ray-address {address}"
    try:
        with socket.create_connection((host, port), timeout=5.0):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{what}: no Ray cluster answers there ({brief(exc)}); start one with `ray start --head` "
            "or give the address it printed"
        ) from None
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, f"{host}:{port}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{what}: something listens there but no Ray driver could join in {timeout:.0f} s; "
            "is it a Ray head's GCS port, and is this machine a node of that cluster?"
        ) from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        errors = [line for line in result.stderr.splitlines() if "Error" in line or "error" in line]
        reason = brief(errors[-1] if errors else (result.stderr.strip().splitlines() or ["no output"])[-1], 160)
        raise ConfigError(
            f"{what}: Ray could not join that cluster ({reason}); run fedseqrec on a node of the cluster "
            "with the same Ray and Python"
        )
    seen = json.loads(lines[-1])
    return RayCluster(f"{host}:{port}", int(seen["nodes"]), float(seen["cpus"]))


def ray_environment(cluster: RayCluster | None) -> dict[str, str]:
    """The environment the SuperLink gets: the cluster's address, or `local` (a private Ray instance)."""
    return {"RAY_ADDRESS": cluster.address if cluster else LOCAL}
