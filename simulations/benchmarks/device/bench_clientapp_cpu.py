"""CPU of each ClientApp process in a loopback deployment, at torch's default threads and at one.

    .venv/bin/python -m simulations.benchmarks.device.bench_clientapp_cpu --threads 0 1 \
        --out simulations/results/clientapp-cpu.json

A SuperNode starts a fresh `flwr-clientapp` process for every message. For each `num-threads`
setting this starts `fedseqrec.launch.deploy` (2 SuperNodes, synthetic data, TLS), reads every
ClientApp's user + sys CPU from /proc while it runs (the last reading before it exits), and
reports them in start order with the run's wall time. The model is test_stop's tiny GRU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RUN = {
    "model": "gru",
    "emb-dim": 8,
    "max-len": 12,
    "batch-size": 32,
    "local-epochs": 1,
    "local-lr": 0.01,
    "strategy": "fedavg",
    "dropout": 0.0,
    "eval-users": 30,
    "seed": 3,
}


def measure(threads: int, rounds: int, work: Path) -> dict:
    toml = work / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {**RUN, "num-threads": threads}.items()))
    command = [sys.executable, "-m", "fedseqrec.launch.deploy", "--data", "synthetic", "--nodes", "2"]
    command += ["--rounds", str(rounds), "--work", str(work / "deploy"), "--run-config", str(toml)]
    command += ["--poll-interval", "0.2"]
    started = time.monotonic()
    with open(work / "deploy.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, dict] = {}
        while proc.poll() is None:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for child in children:
                try:
                    if "flwr-clientapp" not in " ".join(child.cmdline()[:2]):
                        continue
                    cpu = child.cpu_times()
                except psutil.Error:
                    continue
                row = seen.setdefault(child.pid, {"start_s": round(time.monotonic() - started, 1)})
                row["cpu_s"] = round(cpu.user + cpu.system, 2)
            time.sleep(0.1)
    if proc.returncode != 0:
        last = ((work / "deploy.log").read_text(errors="replace").strip().splitlines() or [""])[-1]
        raise SystemExit(f"bench_clientapp_cpu: the deployment failed ({proc.returncode}): {last}")
    return {
        "num-threads": threads,
        "wall_s": round(time.monotonic() - started, 1),
        "clientapps": sorted(seen.values(), key=lambda r: r["start_s"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="num-threads settings, run in turn")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON of the results")
    args = parser.parse_args(argv)
    rows = []
    for threads in args.threads:
        with tempfile.TemporaryDirectory(prefix="bench-clientapp-") as work:
            row = measure(threads, args.rounds, Path(work))
        cpus = [r["cpu_s"] for r in row["clientapps"]]
        print(f"num-threads {threads}: {len(cpus)} ClientApps, CPU s each {cpus}, run {row['wall_s']} s", flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
