"""Privacy-audit benchmark (issue 5): membership-inference AUC and the empirical epsilon lower
bound from canaries, for the non-private federation and for DP runs of both mechanisms.

Each setting is a real simulated federation (in a child process, as `fedseqrec federate` would
run it) with holdout users and canaries, followed by `fedseqrec audit`'s checks.

    FEDSEQREC_DATA_DIR=/work/shared/data .venv/bin/python -m simulations.bench_audit \
        --data ml-100k --rounds 5 --epsilons 8 --out runs/bench-audit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.audit.report import run_audit

ROOT = Path(__file__).resolve().parents[1]


def base_config(data: str, rounds: int, canaries: int) -> dict:
    return {"data": data, "partition": "iid", "num-partitions": 10, "clients-per-round": 10,
            "num-server-rounds": rounds, "local-epochs": 3, "local-lr": 0.005, "train-windows": "last",
            "max-len": 50, "emb-dim": 64, "num-layers": 2, "dropout": 0.2, "batch-size": 64,
            "holdout-fraction": 0.2, "canaries": canaries, "canary-length": 22, "eval-users": 200}


def settings(epsilons: list[float]) -> dict[str, dict]:
    runs = {"no-dp": {"dp-mode": "none"}}
    for eps in epsilons:
        runs[f"server-eps{eps:g}"] = {"dp-mode": "server", "target-epsilon": eps, "clipping-norm": 1.0}
        runs[f"client-eps{eps:g}"] = {"dp-mode": "client", "target-epsilon": eps, "max-grad-norm": 1.0}
    return runs


def simulate_in_child(run_config: dict, num_supernodes: int, log: Path) -> float:
    spec = json.dumps({"run_config": run_config, "num_supernodes": num_supernodes})
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run([sys.executable, str(ROOT / "tests" / "sim_runner.py"), spec], cwd=ROOT, check=True,
                       stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 8.0])
    parser.add_argument("--only", nargs="*", help="run only these settings (names as in the table)")
    parser.add_argument("--out", default="runs/bench-audit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, extra in settings(args.epsilons).items():
        if args.only and name not in args.only:
            continue
        run_dir = (out / name).resolve()
        config = {**base_config(args.data, args.rounds, args.canaries), **extra, "out-dir": str(run_dir)}
        seconds = simulate_in_child(config, 10, out / f"{name}.log")
        report = run_audit(run_dir, users=500, leakage_users=5)
        mia, can = report["membership"]["attacks"], report["canaries"]
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append({"setting": name, "claimed_epsilon": report["claimed_epsilon"],
                     "auc_loss": mia["loss"]["auc"], "auc_log_rank": mia["log_rank"]["auc"],
                     "tpr_at_1pct_fpr_loss": mia["loss"]["tpr_at_0.01_fpr"],
                     "canary_correct": f"{can['correct']}/{can['guesses']}",
                     "epsilon_lower_bound": can["epsilon_lower_bound"],
                     "exposure_included": can["exposure"]["mean_included"],
                     "exposure_excluded": can["exposure"]["mean_excluded"],
                     "test_ndcg@10": summary["test"]["ndcg@10"], "failures": report["failures"],
                     "sim_seconds": seconds})
        (out / "results.json").write_text(json.dumps(rows, indent=2))
        row = rows[-1]
        print(f"{name}: claimed eps {row['claimed_epsilon']}, AUC(loss) {row['auc_loss']['value']:.3f} "
              f"{row['auc_loss']['ci95']}, canaries {row['canary_correct']}, eps_lb {row['epsilon_lower_bound']:.3f}, "
              f"ndcg@10 {row['test_ndcg@10']:.4f}, failures {len(row['failures'])}, {seconds:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
