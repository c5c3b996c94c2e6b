"""One simulated run, in a process of its own (tests kill this process on purpose): forked from the
tests' fork server (`run_forked`, see tests/conftest.py `_start`), or from the command line."""

import json
import os
import sys
from pathlib import Path

from fedseqrec.launch.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


def run(spec: dict) -> None:
    simulate(
        spec["run_config"],
        spec["num_supernodes"],
        client_app_attr=spec.get("client_app", "client.app:app"),
        num_cpus=2,
        ray_address=spec.get("ray_address"),  # the test process's shared Ray head (tests/ray_nodes.py)
        backend=spec.get("backend", "ray"),
    )


def run_forked(spec: dict, env: dict, log: str) -> None:
    """A fork server's child: what `subprocess.Popen(..., start_new_session=True)` of this file with
    `env`, stdout and stderr to `log`, would have been, minus the interpreter's start and imports."""
    os.setsid()  # its own process group: a test SIGKILLs the group, as a terminal's Ctrl-C would reach it
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    run(spec)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
