"""Privacy grid (issues 4 and 5): utility, membership-inference AUC and the empirical epsilon
lower bound from canaries, without DP and at several target epsilons, for both mechanisms.

Each mechanism runs in the federation it protects users in:
- client-side DP-SGD in cross-silo (10 IID silos, every silo every round): each user is one DP
  sample of its silo's updates, so the guarantee is user-level per client;
- server-side DP-FedAvg in cross-device (one user per client, a sample of clients per round):
  one client's whole contribution is one user's, so the guarantee is user-level.
Each has its own non-private reference run in the same federation. Every run is a real simulated
federation (in a child process, as `fedseqrec federate` would run it) with holdout users
(non-members for the MIA) and canaries, followed by `fedseqrec audit`'s checks. Finished settings
in OUT/results.json are kept, so an interrupted grid resumes where it stopped.

    FEDSEQREC_DATA_DIR=/work/shared/data .venv/bin/python -m simulations.benchmarks.privacy.bench_audit \
        --data ml-1m --epsilons 8 4 1 2 --out runs/bench-privacy
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
from common.config import RunConfig
from common.plots import plot_curves

ROOT = Path(__file__).resolve().parents[3]

MODEL = {"model": "sasrec", "max-len": 50, "emb-dim": 64, "num-layers": 2, "dropout": 0.2, "train-windows": "last"}
SILO = {
    "partition": "iid",
    "num-partitions": 10,
    "clients-per-round": 10,
    "local-epochs": 3,
    "local-lr": 0.005,
    "batch-size": 64,
}
DEVICE = {"partition": "user", "local-epochs": 1, "local-lr": 0.005, "batch-size": 64}
# Tuned for DP-SGD on a one-silo proxy at epsilon 8 (4 rounds): larger Poisson batches (less noise
# per step relative to the signal) and a larger step beat the non-private batch 32-64 / lr 0.003-0.005.
CLIENT_DP = {"dp-mode": "client", "max-grad-norm": 1.0, "batch-size": 128, "local-lr": 0.01}
SERVER_DP = {"dp-mode": "server", "clipping-norm": 1.0}


def base_config(data: str, canaries: int, holdout: float) -> dict:
    return {
        "data": data,
        **MODEL,
        "holdout-fraction": holdout,
        "canaries": canaries,
        "canary-length": 22,
        "eval-users": 500,
    }


def settings(epsilons: list[float], silo_rounds: int, device_rounds: int, per_round: int) -> dict[str, dict]:
    silo = {**SILO, "num-server-rounds": silo_rounds}
    device = {**DEVICE, "num-server-rounds": device_rounds, "clients-per-round": per_round}
    runs = {"no-dp-silo": silo, "no-dp-device": device}
    for eps in epsilons:
        runs[f"client-eps{eps:g}"] = {**silo, **CLIENT_DP, "target-epsilon": eps}
        runs[f"server-eps{eps:g}"] = {**device, **SERVER_DP, "target-epsilon": eps}
    return runs


def num_clients(config: dict) -> int:
    from fedseqrec.launch.federate import num_clients as count

    return count(RunConfig.from_flat(config))


def simulate_in_child(run_config: dict, num_supernodes: int, log: Path) -> float:
    spec = json.dumps({"run_config": run_config, "num_supernodes": num_supernodes})
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, str(ROOT / "tests" / "sim_runner.py"), spec],
            cwd=ROOT,
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        )
    return time.perf_counter() - started


def row_for(name: str, run_dir: Path, seconds: float) -> dict:
    report = run_audit(run_dir, users=500, leakage_users=5)
    mia, can = report["membership"]["attacks"], report["canaries"]
    summary = json.loads((run_dir / "summary.json").read_text())
    privacy_file = run_dir / "privacy.json"
    privacy = json.loads(privacy_file.read_text()) if privacy_file.exists() else {}
    return {
        "setting": name,
        "claimed_epsilon": report["claimed_epsilon"],
        "noise_multiplier": privacy.get("noise_multiplier"),
        "delta": report["delta"],
        "unit_of_privacy": report["unit_of_privacy"],
        "auc_loss": mia["loss"]["auc"],
        "auc_log_rank": mia["log_rank"]["auc"],
        "tpr_at_1pct_fpr_loss": mia["loss"]["tpr_at_0.01_fpr"],
        "canary_correct": f"{can['correct']}/{can['guesses']}",
        "epsilon_lower_bound": can["epsilon_lower_bound"],
        "exposure_included": can["exposure"]["mean_included"],
        "exposure_excluded": can["exposure"]["mean_excluded"],
        "update_leakage": report["update_leakage"]["settings"],
        "test_ndcg@10": summary["test"]["ndcg@10"],
        "test_hr@10": summary["test"]["hr@10"],
        "failures": report["failures"],
        "sim_seconds": seconds,
    }


def plot_utility(out: Path, rows: list[dict]) -> None:
    """NDCG@10 against target epsilon per mechanism, with its non-private reference."""
    by_name = {row["setting"]: row for row in rows}
    for mechanism, reference_name in (("client", "no-dp-silo"), ("server", "no-dp-device")):
        reference = by_name.get(reference_name)
        private = sorted(
            (float(n.split("eps")[1]), r["test_ndcg@10"])
            for n, r in by_name.items()
            if n.startswith(f"{mechanism}-eps")
        )
        if not private or reference is None:
            continue
        xs = [eps for eps, _ in private]
        plot_curves(
            out / f"privacy-utility-{mechanism}.png",
            xs,
            {"test NDCG@10": [v for _, v in private], "non-private": [reference["test_ndcg@10"]] * len(xs)},
            xlabel="target epsilon (user-level)",
            title=f"privacy-utility, {mechanism}-side DP",
        )


def markdown_table(rows: list[dict]) -> str:
    """The grid as BENCHMARKS.md shows it: utility and attack results side by side."""
    by_name = {row["setting"]: row for row in rows}
    lines = [
        "| setting | claimed epsilon (user-level) | test NDCG@10 | test HR@10 | share of its non-private NDCG "
        "| MIA AUC (loss) [95% CI] | TPR at 1% FPR | canary guesses right | epsilon lower bound (95%) "
        "| update leakage recall: none / client DP / server DP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["setting"]
        reference = by_name.get("no-dp-silo" if name.startswith(("client", "no-dp-silo")) else "no-dp-device")
        share = row["test_ndcg@10"] / reference["test_ndcg@10"] if reference else float("nan")
        claimed = f"{row['claimed_epsilon']:.2f}" if row["claimed_epsilon"] is not None else "none"
        auc, tpr = row["auc_loss"], row["tpr_at_1pct_fpr_loss"]
        leak = row["update_leakage"]
        lines.append(
            f"| {name} | {claimed} | {row['test_ndcg@10']:.4f} | {row['test_hr@10']:.4f} | {share:.2f} "
            f"| {auc['value']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}] | {tpr['value']:.3f} "
            f"| {row['canary_correct']} | {row['epsilon_lower_bound']:.2f} "
            f"| {leak['no_dp']['recall']:.2f} / {leak['client_dp']['recall']:.2f} / "
            f"{leak['server_dp']['recall']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--silo-rounds", type=int, default=4)
    parser.add_argument("--device-rounds", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=200, help="cross-device runs")
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--holdout-fraction", type=float, default=0.1)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 8.0])
    parser.add_argument("--only", nargs="*", help="run only these settings (names as in the table)")
    parser.add_argument("--out", default="runs/bench-privacy")
    parser.add_argument("--report", action="store_true", help="only rewrite results.md and the plots")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.exists() else []
    if args.report:
        (out / "results.md").write_text(markdown_table(rows))
        plot_utility(out, rows)
        return 0
    done = {row["setting"] for row in rows}
    grid = settings(args.epsilons, args.silo_rounds, args.device_rounds, args.clients_per_round)
    for name, extra in grid.items():
        if (args.only and name not in args.only) or name in done:
            continue
        run_dir = (out / name).resolve()
        config = {**base_config(args.data, args.canaries, args.holdout_fraction), **extra, "out-dir": str(run_dir)}
        clients = num_clients(config)
        print(f"{name}: {clients} clients, {config['num-server-rounds']} rounds ...", flush=True)
        seconds = simulate_in_child(config, clients, out / f"{name}.log")
        rows.append(row_for(name, run_dir, seconds))
        results_file.write_text(json.dumps(rows, indent=2))
        (out / "results.md").write_text(markdown_table(rows))
        plot_utility(out, rows)
        row = rows[-1]
        print(
            f"{name}: claimed eps {row['claimed_epsilon']}, AUC(loss) {row['auc_loss']['value']:.3f} "
            f"{row['auc_loss']['ci95']}, canaries {row['canary_correct']}, eps_lb {row['epsilon_lower_bound']:.3f}, "
            f"ndcg@10 {row['test_ndcg@10']:.4f}, failures {len(row['failures'])}, {seconds:.0f}s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
