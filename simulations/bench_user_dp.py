"""User-level DP on ML-1M's one-user devices: DP-FedAvg and DP-FTRL at epsilon 1, 2, 4, 8.

Every run is `simulations/ml1m-cohort-dp.toml` (cohort engine, 6,040 devices, ~1,000 users per
round, 120 rounds, each user clips its one-step update on its device) with the mechanism and the
target epsilon changed, beside the same recipe without DP (same users per round, same rounds).
Each run goes through the in-process launcher in its own process, one after the other; then
`fedseqrec audit --strict` audits each DP run (accounting replay and lower bound, user MIA with
its interval). Results: one JSON row per run in OUT/user-dp.json and the trade-off plot
OUT/privacy-utility-user-level.png.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.bench_user_dp grid --out runs/user-dp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.config import read_toml

BASE = Path(__file__).with_name("ml1m-cohort-dp.toml")
POPULARITY_TEST_NDCG = 0.0194  # ML-1M most-popular baseline, full ranking (BENCHMARKS.md)
MECHANISMS = ("dp-fedavg", "dp-ftrl")


def run_config(mechanism: str | None, epsilon: float | None, out_dir: Path) -> dict:
    flat = read_toml(BASE)
    flat["out-dir"] = str(out_dir)
    flat["holdout-fraction"] = 0.1  # non-members for the audit's membership inference (same in every run)
    if mechanism is None:
        flat["dp-mode"] = "none"
        return flat
    flat["server-mechanism"] = mechanism
    flat["target-epsilon"] = epsilon
    if mechanism == "dp-ftrl":
        flat["user-sampling"] = "fixed"  # DP-FTRL samples nobody: users come in their slot of each tree
    return flat


def _run_one(flat: dict) -> float:
    """Train one federation in its own process; its wall time."""
    code = "import json, sys; from simulations.simulate import simulate; simulate(json.loads(sys.argv[1]), 2)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed with exit code {done.returncode}")
    return time.perf_counter() - started


def _row(run_dir: Path, mechanism: str | None, epsilon: float | None, wall: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_seconds = [r["train-seconds"] for r in rows[1:] if r.get("replied")]  # the first round warms up Ray
    row = {
        "mechanism": mechanism or "none",
        "target_epsilon": epsilon,
        "run_dir": str(run_dir),
        "test": summary["test"],
        "rounds": summary["rounds"],
        "best_round": summary["best_round"],
        "seconds_per_round": sum(train_seconds) / max(len(train_seconds), 1),
        "wall_seconds": wall,
    }
    privacy_path = run_dir / "privacy.json"
    if privacy_path.exists():
        privacy = json.loads(privacy_path.read_text())
        row.update(
            {
                "epsilon": privacy["epsilon"],
                "delta": privacy["delta"],
                "adjacency": privacy["adjacency"],
                "noise_multiplier": privacy["noise_multiplier"],
            }
        )
    return row


def grid(out: Path, epsilons: list[float], mechanisms: list[str]) -> list[dict]:
    results_path = out / "user-dp.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["mechanism"], r["target_epsilon"]) for r in rows}
    plan = [(None, None)] + [(m, e) for e in epsilons for m in mechanisms]  # both mechanisms at each epsilon first
    for index, (mechanism, epsilon) in enumerate(plan, 1):
        if (mechanism or "none", epsilon) in done:
            continue
        run_dir = out / (f"{mechanism}-eps{epsilon:g}" if mechanism else "non-private")
        print(
            f"bench_user_dp: run {index}/{len(plan)}: {mechanism or 'non-private'} "
            f"{'' if epsilon is None else f'epsilon {epsilon:g}'} -> {run_dir}",
            flush=True,
        )
        wall = _run_one(run_config(mechanism, epsilon, run_dir))
        rows.append(_row(run_dir, mechanism, epsilon, wall))
        results_path.write_text(json.dumps(rows, indent=2))  # a stopped grid resumes where it was
    return rows


def audit(out: Path, users: int) -> list[dict]:
    results_path = out / "user-dp.json"
    rows = json.loads(results_path.read_text())
    fedseqrec = str(Path(sys.executable).parent / "fedseqrec")
    for row in rows:
        if row["mechanism"] == "none" or "audit" in row:
            continue
        print(f"bench_user_dp: audit {row['run_dir']}", flush=True)
        code = subprocess.run([fedseqrec, "audit", row["run_dir"], "--strict", "--users", str(users)]).returncode
        report = json.loads((Path(row["run_dir"]) / "audit.json").read_text())
        mia = report.get("membership", {})
        attacks = {name: [a["auc"]["value"], *a["auc"]["ci95"]] for name, a in mia.get("attacks", {}).items()}
        row["audit"] = {
            "strict_exit_code": code,
            "lower_bound": report["accounting"]["epsilon"]["independent_lower_bound"],
            "replayed": report["accounting"]["epsilon"]["replayed_run_accountant"],
            "failures": report["accounting"]["failures"],
            "mia_auc_with_95_interval": attacks,
            "canaries": report.get("canaries", {}).get("epsilon_lower_bound"),
        }
        results_path.write_text(json.dumps(rows, indent=2))
    return rows


def plot(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((out / "user-dp.json").read_text())
    base = next((r for r in rows if r["mechanism"] == "none"), None)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mechanism, marker in zip(MECHANISMS, "os"):
        points = sorted((r["epsilon"], r["test"]["ndcg@10"]) for r in rows if r["mechanism"] == mechanism)
        if points:
            ax.plot(*zip(*points), marker=marker, label=mechanism.upper().replace("DP-", "DP-"))
    if base:
        ax.axhline(base["test"]["ndcg@10"], color="black", linestyle="--", label="non-private, same compute")
    ax.axhline(POPULARITY_TEST_NDCG, color="grey", linestyle=":", label="most popular")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon (user-level, delta = 1/6,040)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("ML-1M cross-device (6,040 one-user devices), SASRec")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "privacy-utility-user-level.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["grid", "audit", "plot"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--audit-users", type=int, default=600, help="audit: members and non-members for the MIA")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "grid":
        grid(out, args.epsilons, args.mechanisms)
    elif args.mode == "audit":
        audit(out, args.audit_users)
    print(plot(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
