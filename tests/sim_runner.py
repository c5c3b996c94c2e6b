"""Run one in-process simulation from the command line (tests kill this process on purpose)."""

import json
import sys

from fedseqrec.launch.simulate import simulate

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    simulate(
        spec["run_config"],
        spec["num_supernodes"],
        client_app_attr=spec.get("client_app", "client.app:app"),
        num_cpus=2,
        ray_address=spec.get("ray_address"),  # the test process's shared Ray head (tests/ray_nodes.py)
        backend=spec.get("backend", "ray"),
    )
