"""What SecAgg+ costs per round: the same DP-FedAvg rounds with and without secure aggregation.

ML-1M cohort engine (simulations/ml1m-cohort-dp.toml: ~1,000 users per round, user-level DP),
`--nodes` SuperNodes hosting the users, `--rounds` rounds each way, one after the other in one
invocation. Reported: mean seconds per round after the first (Ray's start-up), and the ratio.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.bench_secagg --out runs/bench-secagg
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common.config import read_toml

BASE = Path(__file__).with_name("ml1m-cohort-dp.toml")


def _seconds_per_round(flat: dict, nodes: int) -> float:
    code = f"import json, sys; from simulations.simulate import simulate; simulate(json.loads(sys.argv[1]), {nodes})"
    if subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ)).returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed")
    rows = [json.loads(line) for line in (Path(flat["out-dir"]) / "metrics.jsonl").read_text().splitlines()]
    later = [r["train-seconds"] for r in rows[1:]]
    return sum(later) / len(later)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
