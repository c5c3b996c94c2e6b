"""Faults and attacks on ML-1M: dropouts, attackers against robust aggregation, item promotion.

Each run is one simulated federation in its own process (the in-process launcher Flower's
simulation uses), one after the other; a stopped benchmark resumes where it was (rows already in
OUT/faults.json are skipped). Rows: the run's validation-selected test metrics and wall time.

    # dropout: the share of sampled clients (users, on the cohort engine) that drop every round
    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.robustness.bench_faults dropout \\
        --run-config simulations/configs/ml1m-cohort.toml --rates 0 0.1 0.3 0.5 --out runs/faults/cross-device
    ... dropout --run-config simulations/configs/ml1m-silo-iid.toml --rates 0 0.1 0.3 0.5 --out runs/faults/cross-silo
    # untargeted attackers (a share of the clients) against each aggregation rule
    ... attacks --run-config simulations/configs/ml1m-silo-iid.toml --shares 0.1 0.2 \\
        --attacks sign-flip scale random --strategies fedavg fedmedian fedtrimmedavg krum multikrum \\
        --out runs/faults/attacks
    # item promotion: fake users pushing the coldest item; its exposure (share of users with it in their
    # top-10), without and with a defence: the server's per-device norm bound, a trimmed mean of users
    ... promotion --run-config simulations/configs/ml1m-cohort.toml --shares 0.01 --out runs/faults/promotion \\
        --defences none max-update-norm=6 "user-trim-beta=0.05;cohort-chunk=256"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.config import parse_settings
from simulations.benchmarks.federation.bench_federation import load_run_config

LAUNCH = (
    "import json, sys\n"
    "from common.config import RunConfig\n"
    "from fedseqrec.launch.simulate import num_supernodes, simulate\n"
    "flat = json.loads(sys.argv[1])\n"
    "simulate(flat, num_supernodes(RunConfig.from_flat(flat)))\n"
)


DEFAULT_STRATEGIES = ["fedavg", "fedmedian", "fedtrimmedavg", "krum"]


def run_federation(flat: dict) -> float:
    """One federation in its own process (a fresh Ray, nothing shared); its wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCH, json.dumps(flat)], env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed with exit code {done.returncode}")
    return time.perf_counter() - started


def finished_wall(run_dir: Path, flat: dict) -> float | None:
    """A folder that already holds this config's finished run (e.g. the same fault-free run of another
    sweep, copied) is read, not run again; its wall time is the one its summary recorded."""
    from common.config import RunConfig

    try:
        done = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None

    def settings(config: dict) -> dict:  # keys added since the run keep their defaults
        return RunConfig.from_flat({**config, "out-dir": ""}).to_flat()

    return float(summary["wall_seconds_this_process"]) if settings(done) == settings(flat) else None


def cold_item(flat: dict) -> int:
    """The promoted item: the least popular item of the training data (model index; the lowest on ties)."""
    from common.config import RunConfig
    from common.data.load import load_sequence_data

    counts = load_sequence_data(RunConfig.from_flat(flat).data).item_counts(train_only=True)
    return int(np.argmin(counts[1:])) + 1


def exposure(run_dir: Path, item: int) -> float:
    from common.config import RunConfig
    from common.data.load import load_sequence_data
    from common.evaluation.ranking import item_exposure, model_scores
    from common.model.checkpoint import load_model

    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
    model, _, _ = load_model(run_dir / "model.pt")
    return item_exposure(model_scores(model), load_sequence_data(config.data), item)


class Bench:
    def __init__(self, out: Path, base: dict):
        self.out, self.base = out, base
        self.path = out / "faults.json"
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []

    def run(self, name: str, overrides: dict, target: int = 0) -> dict:
        done = next((r for r in self.rows if r["name"] == name), None)
        if done:
            return done
        run_dir = self.out / name
        flat = {**self.base, **overrides, "out-dir": str(run_dir)}
        print(f"bench_faults: {name} -> {run_dir}", flush=True)
        wall = finished_wall(run_dir, flat)
        if wall is None:
            wall = run_federation(flat)
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {"name": name, **overrides, "test": summary["test"], "rounds": summary["rounds"], "wall_seconds": wall}
        if target:
            row["target_exposure@10"] = exposure(run_dir, target)
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=2))
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["dropout", "attacks", "promotion"])
    parser.add_argument("--run-config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--attacks", nargs="+", default=["sign-flip", "scale", "random"])
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, help="promotion: the config's own")
    parser.add_argument(
        "--defences",
        nargs="+",
        default=["none"],
        metavar="KEY=VALUE[;KEY=VALUE]",
        help="promotion: run-config settings of each defence ('none': no defence)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="run-config keys for every run (TOML values)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_run_config(args.run_config)
    # Attacks and per-device checks take the cohort engine's per-user path, which scores in float32 (the
    # main job's bfloat16 scoring is its one-step path only); the recorded runs were float32 throughout.
    base["score-precision"] = "float32"
    base.update(parse_settings(args.set))
    bench = Bench(out, base)
    if args.mode == "dropout":
        clean = bench.run("dropout-0", {"sim-dropout": 0.0})
        for rate in args.rates:
            row = bench.run(f"dropout-{rate:g}", {"sim-dropout": rate})
            ratio = row["test"]["ndcg@10"] / clean["test"]["ndcg@10"]
            print(f"bench_faults: dropout {rate:g}: test NDCG@10 {row['test']['ndcg@10']:.4f} ({ratio:.3f} of clean)")
    elif args.mode == "attacks":
        for strategy in args.strategies:
            clean = bench.run(f"{strategy}-clean", {"strategy": strategy})
            for share in args.shares:
                for attack in args.attacks:
                    overrides = {"strategy": strategy, "sim-attack": attack, "sim-attackers": share}
                    if strategy in ("krum", "multikrum", "bulyan"):  # told how many attackers to expect
                        overrides["assumed-malicious"] = math.ceil(share * base["clients-per-round"] - 1e-9)
                    row = bench.run(f"{strategy}-{attack}-{share:g}", overrides)
                    print(
                        f"bench_faults: {strategy} vs {attack} by {share:.0%}: test NDCG@10 "
                        f"{row['test']['ndcg@10']:.4f} (clean {clean['test']['ndcg@10']:.4f})",
                        flush=True,
                    )
    else:
        target = cold_item(bench.base)
        clean = bench.run("promotion-clean", {}, target)
        print(f"bench_faults: target item {target}: clean exposure {clean['target_exposure@10']:.4f}", flush=True)
        strategies = args.strategies if args.strategies != DEFAULT_STRATEGIES else [base["strategy"]]
        for strategy in strategies:
            for share in args.shares:
                for defence in args.defences:
                    overrides = {
                        "strategy": strategy,
                        "sim-attack": "promote",
                        "sim-attackers": share,
                        "sim-target-item": target,
                        **parse_settings(defence.split(";") if defence != "none" else [], "--defences"),
                    }
                    row = bench.run(f"promote-{strategy}-{share:g}-{defence.replace(';', '-')}", overrides, target)
                    print(
                        f"bench_faults: promotion by {share:.0%} fake users, {strategy}, defence {defence}: "
                        f"exposure {row['target_exposure@10']:.4f} (clean {clean['target_exposure@10']:.4f}), "
                        f"test NDCG@10 {row['test']['ndcg@10']:.4f} (clean {clean['test']['ndcg@10']:.4f})",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
