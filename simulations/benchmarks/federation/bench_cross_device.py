"""Cross-device benchmarks (ML-1M, one user per device): the cohort engine's throughput against
one SuperNode per user, and a whole cohort-engine federation through `flwr run`.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.federation.bench_cross_device \\
        throughput \\
        --out runs/bench-cross-device --users-per-round 200 --rounds 3
    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.federation.bench_cross_device run \\
        --run-config simulations/configs/ml1m-cohort.toml --out runs/bench-cross-device
    .venv/bin/python -m simulations.benchmarks.federation.bench_cross_device plot --out simulations/results \\
        --runs RUN_DIR [RUN_DIR ...]

Throughput: the same rounds (same users per round, one local SGD step per user, no evaluation
until the last round) on the same machine, first with the cohort engine on 2 SuperNodes, then
with one SuperNode per user; user updates per second over the rounds after the first (Ray's
start-up), and the time to identify the clients. Run: `fedseqrec federate` as a user would, with
the wall time, the peak memory of the whole process tree and the run's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from common.config import RunConfig
from fedseqrec.launch.simulate import num_supernodes, simulate
from simulations.benchmarks.federation.bench_federation import PeakMemory, load_run_config

THROUGHPUT = {
    "data": "ml-1m",
    "partition": "user",
    "train-windows": "last",
    "model": "sasrec",
    "max-len": 50,
    "local-epochs": 1,
    "local-optimizer": "sgd",
    "local-lr": 1.0,
    "batch-size": 64,
    "strategy": "fedavg",
    "eval-users": 200,
    "cohort-nodes": 2,
    "cohort-chunk": 128,
}


def _throughput_one(flat: dict, out: Path) -> dict:
    config = RunConfig.from_flat(flat)
    started = time.perf_counter()
    with PeakMemory() as memory:
        simulate({**flat, "out-dir": str(out)}, num_supernodes=num_supernodes(config), num_cpus=2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    seconds = [r["train-seconds"] for r in rows[1:]]
    users = [r["replied"] for r in rows[1:]]
    return {
        "supernodes": num_supernodes(config),
        "round_train_seconds": [r["train-seconds"] for r in rows],
        "user_updates_per_second": float(np.sum(users) / np.sum(seconds)),
        "identify_seconds": summary["identify_seconds"],
        "wall_seconds": time.perf_counter() - started,
        **memory.report(),
    }


def bench_throughput(out: Path, users_per_round: int, rounds: int) -> dict:
    base = {
        **THROUGHPUT,
        "clients-per-round": users_per_round,
        "num-server-rounds": rounds,
        "eval-every-rounds": rounds,
    }
    cohort = _throughput_one({**base, "cohort-engine": True}, out / "cohort")
    print(f"cohort engine: {cohort['user_updates_per_second']:.1f} user updates/s", flush=True)
    per_user = _throughput_one({**base, "cohort-engine": False}, out / "one-supernode-per-user")
    print(f"one SuperNode per user: {per_user['user_updates_per_second']:.1f} user updates/s", flush=True)
    return {
        "mode": "throughput",
        "users_per_round": users_per_round,
        "rounds": rounds,
        "cohort_engine": cohort,
        "one_supernode_per_user": per_user,
        "speedup": cohort["user_updates_per_second"] / per_user["user_updates_per_second"],
    }


def bench_run(run_config: str, out: Path) -> dict:
    flat = load_run_config(run_config)
    run_dir = out / "run"
    command = [
        str(Path(sys.executable).parent / "fedseqrec"),
        "federate",
        "--run-config",
        run_config,
        "--out-dir",
        str(run_dir),
    ]
    started = time.perf_counter()
    with PeakMemory() as memory:
        code = subprocess.run(command, env=dict(os.environ)).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "mode": "run",
        "command": " ".join(command),
        "wall_seconds": wall,
        **memory.report(),
        "rounds": summary["rounds"],
        "best_round": summary["best_round"],
        "users_per_round": flat["clients-per-round"],
        "test": summary["test"],
        "identify_seconds": summary["identify_seconds"],
        "validation_by_round": [(r["round"], r["validation"]["ndcg@10"]) for r in rows if "validation" in r],
    }


# Recorded curves to compare with (BENCHMARKS.md): validation NDCG@10 of the 10-silo IID federation
# per round (3 local epochs: 3 passes over each user's data per round) and the centralized result.
SILO_IID_BY_ROUND = [
    0.025,
    0.072,
    0.098,
    0.106,
    0.112,
    0.116,
    0.121,
    0.124,
    0.128,
    0.131,
    0.134,
    0.136,
    0.137,
    0.139,
    0.141,
]
SILO_LOCAL_EPOCHS = 3
CENTRALIZED_TEST_NDCG = 0.1519


def plot_participations(path: Path, run_dirs: list[Path]) -> None:
    """Validation NDCG@10 against participations per user (passes of a user's data through training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run_dir in run_dirs:
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        users, steps = summary["num_users"], config["local-epochs"]
        done, xs, ys = 0, [], []
        for row in rows:
            done += row["replied"] * steps / users
            if "validation" in row:
                xs.append(done)
                ys.append(row["validation"]["ndcg@10"])
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            label=f"cross-device, cohort engine ({config['clients-per-round']} users/round, "
            f"server-lr {config['server-lr']:g})",
        )
    silo_x = [SILO_LOCAL_EPOCHS * (r + 1) for r in range(len(SILO_IID_BY_ROUND))]
    ax.plot(silo_x, SILO_IID_BY_ROUND, marker="s", markersize=3, label="cross-silo, 10 IID silos (3 local epochs)")
    ax.axhline(CENTRALIZED_TEST_NDCG, color="grey", linestyle="--", label="centralized SASRec (test, best epoch 24)")
    ax.set_xlabel("participations per user (local passes over the user's window)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("ML-1M, SASRec L50")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "run", "plot"])
    parser.add_argument("--runs", nargs="+", default=[], help="plot: run folders of cohort-engine runs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-config", default="simulations/configs/ml1m-cohort.toml")
    parser.add_argument("--users-per-round", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "plot":
        plot_participations(out / "participations.png", [Path(r) for r in args.runs])
        print(out / "participations.png")
        return 0
    result = (
        bench_throughput(out, args.users_per_round, args.rounds)
        if args.mode == "throughput"
        else bench_run(args.run_config, out)
    )
    result["machine"] = f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    (out / f"bench-{args.mode}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
