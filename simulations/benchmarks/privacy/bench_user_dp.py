"""User-level DP on ML-1M's one-user devices: DP-FedAvg and DP-FTRL at epsilon 1, 2, 4, 8.

Every run is `simulations/configs/ml1m-cohort-dp.toml` (cohort engine, 6,040 devices, ~1,000 users per
round, 120 rounds, each user clips its one-step update on its device) with the mechanism and the
target epsilon changed, beside the same recipe without DP (same users per round, same rounds).
Each run goes through the in-process launcher in its own process, one after the other; then
`fedseqrec audit --strict` audits each DP run (accounting replay and lower bound, user MIA with
its interval). Results: one JSON row per run in OUT/user-dp.json and the trade-off plot
OUT/privacy-utility-user-level.png.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.privacy.bench_user_dp grid \\
        --out runs/user-dp

`item-table` runs DP-FedAvg at one epsilon with the item table made cheaper to privatise (it holds
~70% of SASRec's weights, so most of the noise): fewer dimensions, a factorised table, or each
user's update limited to the rows of its own items. Rows: OUT/item-table.json, plot OUT/item-table.png.

    ... -m simulations.benchmarks.privacy.bench_user_dp item-table --out runs/user-dp \\
        --variants full touched emb32 rank16
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

BASE = Path(__file__).resolve().parents[3] / "simulations/configs/ml1m-cohort-dp.toml"
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
    code = "import json, sys; from fedseqrec.launch.simulate import simulate; simulate(json.loads(sys.argv[1]), 2)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed with exit code {done.returncode}")
    return time.perf_counter() - started


def _row(run_dir: Path, mechanism: str | None, epsilon: float | None, wall: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The first round warms up Ray. Under Poisson DP the round log has no `replied` (the cohort size is
    # data), so a trained round is one with `train-seconds`.
    train_seconds = [r["train-seconds"] for r in rows[1:] if "train-seconds" in r and "skipped" not in r]
    row = {
        "mechanism": mechanism or "none",
        "target_epsilon": epsilon,
        "run_dir": str(run_dir),
        "test": summary["test"],
        "rounds": summary["rounds"],
        "best_round": summary["best_round"],
        "selection": summary.get("selection"),  # "last round" or "validation" (the public cohort's under DP)
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


def grid(out: Path, epsilons: list[float], mechanisms: list[str], reference: bool = True) -> list[dict]:
    results_path = out / "user-dp.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["mechanism"], r["target_epsilon"]) for r in rows}
    plan = [(m, e) for e in epsilons for m in mechanisms]  # both mechanisms at each epsilon first
    if reference:  # the same recipe without DP, first
        plan = [(None, None)] + plan
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


# Item-table variants: run-config overrides of the DP-FedAvg recipe.
ITEM_TABLE_VARIANTS = {
    "full": {},
    "touched": {"local-item-rows": "touched"},
    "emb32": {"emb-dim": 32},
    "rank16": {"item-rank": 16},
}


def _weights(flat: dict) -> dict:
    """Model and item-table sizes of a run config (number of weights the DP noise covers)."""
    from common.config import RunConfig
    from common.data.load import load_sequence_data
    from common.training.step import model_for

    config = RunConfig.from_flat(flat)
    data = load_sequence_data(config.data)
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    arrays = model.arrays()
    table = sum(v.numel() for k, v in arrays.items() if k.startswith("item_"))
    return {"weights": sum(v.numel() for v in arrays.values()), "item_table_weights": table}


def item_table(out: Path, epsilon: float, variants: list[str], non_private: bool) -> list[dict]:
    results_path = out / "item-table.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["variant"], r["mechanism"]) for r in rows}
    for variant in variants:
        for mechanism in ("dp-fedavg", None) if non_private else ("dp-fedavg",):
            if (variant, mechanism or "none") in done:
                continue
            run_dir = out / f"table-{variant}-{f'eps{epsilon:g}' if mechanism else 'non-private'}"
            flat = {**run_config(mechanism, epsilon if mechanism else None, run_dir), **ITEM_TABLE_VARIANTS[variant]}
            print(f"bench_user_dp: item table {variant}, {mechanism or 'non-private'} -> {run_dir}", flush=True)
            wall = _run_one(flat)
            rows.append({"variant": variant, **_weights(flat), **_row(run_dir, mechanism, epsilon, wall)})
            results_path.write_text(json.dumps(rows, indent=2))
    _plot_item_table(out, rows)
    return rows


def _plot_item_table(out: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [r for r in rows if r["mechanism"] == "dp-fedavg"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labels = [f"{r['variant']}\n{r['weights'] / 1e3:.0f}k weights" for r in private]
    ax.bar(labels, [r["test"]["ndcg@10"] for r in private], color="tab:blue", label="DP-FedAvg")
    for i, r in enumerate(private):
        clean = next((c for c in rows if c["variant"] == r["variant"] and c["mechanism"] == "none"), None)
        if clean:
            ax.plot([i - 0.4, i + 0.4], [clean["test"]["ndcg@10"]] * 2, color="black", linestyle="--")
    ax.axhline(POPULARITY_TEST_NDCG, color="grey", linestyle=":", label="most popular")
    ax.set_ylabel("test NDCG@10")
    epsilons = sorted({round(r["epsilon"], 2) for r in private})
    ax.set_title(f"ML-1M item tables, user-level DP-FedAvg, epsilon {', '.join(map(str, epsilons))}", fontsize=10)
    ax.plot([], [], color="black", linestyle="--", label="non-private, same compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "item-table.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    parser.add_argument("mode", choices=["grid", "audit", "plot", "item-table"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--variants", nargs="+", choices=sorted(ITEM_TABLE_VARIANTS), default=list(ITEM_TABLE_VARIANTS))
    parser.add_argument("--non-private", action="store_true", help="item-table: each variant without DP too")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="grid: skip the non-private run (re-measuring DP rows beside an earlier reference)",
    )
    parser.add_argument("--audit-users", type=int, default=600, help="audit: members and non-members for the MIA")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "item-table":
        item_table(out, args.epsilons[0], args.variants, args.non_private)
        return 0
    if args.mode == "grid":
        grid(out, args.epsilons, args.mechanisms, reference=not args.no_reference)
    elif args.mode == "audit":
        audit(out, args.audit_users)
    print(plot(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
