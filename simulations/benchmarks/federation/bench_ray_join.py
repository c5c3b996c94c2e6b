"""What a simulated run pays for Ray: a private Ray instance per run, joining a running head, and no
Ray at all (the in-process backend, which the test suite now uses).

    .venv/bin/python -m simulations.benchmarks.federation.bench_ray_join --reps 3 --out runs/bench-ray-join.json

The test suite's simulations (tests/sim_runner.py) call the ClientApp in their own process
(fedseqrec/launch/in_process.py); the few that keep Ray join one head per test process
(tests/ray_nodes.py). This times the same tiny run (the suite's SIM_CONFIG, 2 rounds, 4
SuperNodes) the three ways, interleaved rep by rep in one invocation so that all see the same
machine load, each in a fresh child process as the tests run it (wall seconds
from process start to exit). It also times `import server.app` in a fresh interpreter: the cost
every ServerApp process pays before round 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT, SIM_CONFIG
from tests.ray_nodes import shared_head, stop_shared_head


def _timed_run(ray_address: str | None, out: Path, backend: str = "ray") -> float:
    spec = {"run_config": {**SIM_CONFIG, "num-server-rounds": 2, "out-dir": str(out)}, "num_supernodes": 4}
    spec["ray_address"], spec["backend"] = ray_address, backend
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sim_runner.py"), json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the run into {out} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def _import_seconds(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="a JSON file for the timings")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"private Ray": [], "joined head": [], "in-process": [], "import server.app": []}
    work = Path(tempfile.mkdtemp(prefix="bench-ray-join-"))
    head_start = time.perf_counter()
    address = shared_head()
    head_seconds = time.perf_counter() - head_start
    try:
        for rep in range(args.reps):
            times["private Ray"].append(_timed_run(None, work / f"private-{rep}"))
            times["joined head"].append(_timed_run(address, work / f"joined-{rep}"))
            times["in-process"].append(_timed_run(None, work / f"in-process-{rep}", backend="in-process"))
            times["import server.app"].append(_import_seconds("server.app"))
            shown = ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items())
            print(f"rep {rep + 1}/{args.reps}: {shown}", flush=True)
    finally:
        stop_shared_head()
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "seconds": times,
        "median_seconds": medians,
        "joined_over_private": medians["joined head"] / medians["private Ray"],
        "in_process_over_private": medians["in-process"] / medians["private Ray"],
        "head_start_seconds_once": head_seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(result["median_seconds"]),
        f"joined / private {result['joined_over_private']:.2f}",
        f"in-process / private {result['in_process_over_private']:.2f}",
    )


if __name__ == "__main__":
    main()
