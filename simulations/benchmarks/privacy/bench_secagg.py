"""What SecAgg+ costs per round: the same DP-FedAvg rounds with and without secure aggregation.

ML-1M cohort engine (simulations/configs/ml1m-cohort-dp.toml: ~1,000 users per round, user-level DP),
`--nodes` SuperNodes hosting the users, `--rounds` rounds each way, one after the other in one
invocation. Reported: mean seconds per round after the first (Ray's start-up), and the ratio.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.privacy.bench_secagg \\
        --out runs/bench-secagg

`--deployment DEVICES` measures the same on a loopback deployment instead (fedseqrec/launch/loopback.py:
TLS SuperLink, authenticated SuperNodes, real processes): DEVICES SuperNodes, each one ML-1M user
with the whole ML-1M catalogue, the same DP-FedAvg recipe, plain rounds then SecAgg+ rounds on the
same running deployment. Reported: seconds per round (the round's wall time in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common.config import read_toml

BASE = Path(__file__).resolve().parents[3] / "simulations/configs/ml1m-cohort-dp.toml"


def _seconds_per_round(flat: dict, nodes: int) -> float:
    code = (
        f"import json, sys; from fedseqrec.launch.simulate import simulate; simulate(json.loads(sys.argv[1]), {nodes})"
    )
    if subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ)).returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed")
    rows = [json.loads(line) for line in (Path(flat["out-dir"]) / "metrics.jsonl").read_text().splitlines()]
    later = [r["train-seconds"] for r in rows[1:]]
    return sum(later) / len(later)


def _one_user_devices(config, partition_dir: Path, devices: int) -> None:
    """Node files of `devices` one-user devices over the dataset's whole catalogue."""
    import pandas as pd

    from fedseqrec.deployment_data import write_node_files

    write_node_files(config, partition_dir, devices)  # every user, spread over the nodes; keep one each
    for path in sorted(partition_dir.glob("node-*.csv")):
        frame = pd.read_csv(path)
        frame[frame["user_id"] == frame["user_id"].iloc[0]].to_csv(path, index=False)


def deployment(out: Path, devices: int, rounds: int) -> dict:
    from common.config import RunConfig
    from fedseqrec.launch.loopback import LoopbackDeployment, nodes_from_partition

    work = (out / "deployment").resolve()
    flat = {
        **read_toml(BASE),
        "num-server-rounds": rounds,
        "eval-every-rounds": rounds,
        "clients-per-round": devices,
        "user-sampling": "fixed",
        "cohort-nodes": 1,
        "target-epsilon": 0.0,
        "noise-multiplier": 1.0,
        "num-threads": 1,
    }
    config = RunConfig.from_flat({**flat, "out-dir": str(work / "x")}, where="bench_secagg")
    _one_user_devices(config, work / "partition", devices)
    flat.update(
        {"data": "", "catalogue-path": str(work / "partition" / "catalogue.json"), "federated-evaluation": True}
    )
    result = {"mode": "deployment", "devices": devices, "rounds": rounds}
    with LoopbackDeployment(work, nodes_from_partition(work / "partition", work)) as running:
        for name, secure in (("plain", False), ("secagg", True)):
            run_dir = work / name
            running.run({**flat, "secure-aggregation": secure, "out-dir": str(run_dir)}, timeout=3600)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            seconds = [r["train-seconds"] for r in rows]
            result[f"{name}_seconds_per_round"] = sum(seconds) / len(seconds)
            result[f"{name}_round_seconds"] = seconds
            print(f"bench_secagg: deployment {name}: {result[f'{name}_seconds_per_round']:.1f} s per round", flush=True)
    result["ratio"] = result["secagg_seconds_per_round"] / result["plain_seconds_per_round"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--deployment", type=int, default=0, metavar="DEVICES", help="loopback deployment instead")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.deployment:
        result = deployment(out, args.deployment, args.rounds)
        (out / "bench-secagg-deployment.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0
    result = {"rounds": args.rounds, "nodes": args.nodes}
    for name, secure in (("plain", False), ("secagg", True)):
        flat = {
            **read_toml(BASE),
            "num-server-rounds": args.rounds,
            "eval-every-rounds": args.rounds,
            "eval-users": 200,
            "cohort-nodes": args.nodes,
            "secure-aggregation": secure,
            "target-epsilon": 0.0,
            "noise-multiplier": 1.0,
            "out-dir": str(out / name),
        }
        result[f"{name}_seconds_per_round"] = _seconds_per_round(flat, args.nodes)
        print(f"bench_secagg: {name}: {result[f'{name}_seconds_per_round']:.2f} s per round", flush=True)
    result["ratio"] = result["secagg_seconds_per_round"] / result["plain_seconds_per_round"]
    (out / "bench-secagg.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
