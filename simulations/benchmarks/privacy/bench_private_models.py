"""Private models worth deploying: `ml1m-private.toml` at epsilon 8, 4, 2, 1, and its population projections.

Every run is `simulations/configs/ml1m-private.toml` (user-level DP-FedAvg on ML-1M's one-user devices,
fine-tuning a model pretrained on public data: the opt-in public cohort and ML-100K mapped by title)
with `target-epsilon` changed (`tradeoff`), or at epsilon 8 with `simulated-population` (`populations`:
the noise a population of N would need at the same cohort; a projection, labelled so in its reports).
The public model is trained once, in the first run, and copied into every later run's folder: the
run finds it (same settings) and starts from it instead of pretraining again. Each DP run is then
audited with `fedseqrec audit --strict` (accounting replay, the release list). One JSON row per run
in OUT/private-models.json; the trade-off plot OUT/private-tradeoff.png, with the non-private main job,
the public-only model and popularity as lines.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.privacy.bench_private_models \\
        tradeoff --out runs/private --epsilons 8 4 2 1
    ... bench_private_models populations --out runs/private --sizes 60000 600000
    ... bench_private_models table --out runs/private      # the rows as a Markdown table
    ... bench_private_models audit --out runs/private      # audit every run again
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.config import read_toml

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "simulations/configs/ml1m-private.toml"
MAIN_JOB_TEST_NDCG = 0.1451  # the non-private main job (ml1m-cohort.toml), BENCHMARKS.md headline
POPULARITY_TEST_NDCG = 0.0194  # ML-1M most-popular, full ranking
PUBLIC_FILES = ("public-model.pt", "pretrain.json")
K = 10


def run_config(out_dir: Path, epsilon: float, population: int = 0, extra: dict | None = None) -> dict:
    flat = read_toml(BASE)
    flat.update({"out-dir": str(out_dir), "target-epsilon": epsilon, **(extra or {})})
    if population:
        flat["simulated-population"] = population
    return flat


def _seed_public_model(out: Path, run_dir: Path) -> None:
    """Copy the public model of an earlier run of this benchmark into `run_dir` (the run checks that
    it was pretrained with the same settings, and pretrains again if not)."""
    if (run_dir / PUBLIC_FILES[0]).exists():
        return
    for earlier in sorted(out.glob("*/public-model.pt")):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in PUBLIC_FILES:
            shutil.copy2(earlier.parent / name, run_dir / name)
        return


def _run_one(flat: dict) -> float:
    """One federation in its own process (the in-process launcher); its wall time."""
    code = "import json, sys; from fedseqrec.launch.simulate import simulate; simulate(json.loads(sys.argv[1]), 2)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ), cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed with exit code {done.returncode}")
    return time.perf_counter() - started


def _audit(run_dir: Path) -> dict:
    command = [sys.executable, "-m", "fedseqrec.cli", "audit", str(run_dir), "--strict"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return {"strict_exit_code": done.returncode, "last_line": (done.stdout + done.stderr).strip().splitlines()[-1:]}


def _row(run_dir: Path, epsilon: float, population: int, wall: float | None, audit: dict | None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    privacy = json.loads((run_dir / "privacy.json").read_text())
    test = summary["test"]
    public_only = summary.get("public_only", {})
    return {
        "target_epsilon": epsilon,
        "simulated_population": population or None,
        "run_dir": str(run_dir),
        "test": {key: test[key] for key in (f"ndcg@{K}", f"hr@{K}", f"coverage@{K}", f"long-tail@{K}") if key in test},
        "public_only_test": public_only.get("test"),
        "gain_over_public_only": public_only.get("released_minus_public_ndcg"),
        "epsilon": privacy["epsilon"],
        "delta": privacy["delta"],
        "population": privacy["clients"],  # the DP population (the public cohort is not in it), or the projection's
        "noise_multiplier": privacy["noise_multiplier"],
        "accountant": privacy["accountant_name"],
        "projection": privacy.get("projection", {}).get("note"),
        "released_round": summary["best_round"],
        "rounds": summary["rounds"],
        "fraction_of_main_job": test[f"ndcg@{K}"] / MAIN_JOB_TEST_NDCG,
        "wall_seconds": wall,
        "audit": audit,
    }


def _results(out: Path) -> list[dict]:
    path = out / "private-models.json"
    return json.loads(path.read_text()) if path.exists() else []


def _save(out: Path, row: dict) -> None:
    rows = [r for r in _results(out) if r["run_dir"] != row["run_dir"]] + [row]
    (out / "private-models.json").write_text(json.dumps(rows, indent=2))


def run_grid(out: Path, settings: list[tuple[float, int]], audit: bool, extra: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for epsilon, population in settings:
        name = f"eps{epsilon:g}" + (f"-N{population}" if population else "")
        run_dir = out / name
        if (run_dir / "summary.json").exists():
            if not any(r["run_dir"] == str(run_dir) for r in _results(out)):  # finished, not yet in the results
                _save(
                    out, _row(run_dir, epsilon, population, None, _audit(run_dir) if audit and not population else None)
                )
            print(f"{name}: done already", flush=True)
            continue
        _seed_public_model(out, run_dir)
        wall = _run_one(run_config(run_dir, epsilon, population, extra))
        row = _row(run_dir, epsilon, population, wall, _audit(run_dir) if audit and not population else None)
        _save(out, row)
        print(
            json.dumps({k: row[k] for k in ("target_epsilon", "simulated_population", "test", "epsilon")}), flush=True
        )
    plot(out)


def plot(out: Path) -> None:
    from common.plots import plt  # on the Agg backend

    rows = [r for r in _results(out) if not r["simulated_population"]]
    if not rows:
        return
    rows.sort(key=lambda r: r["target_epsilon"])
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [r["epsilon"] for r in rows]
    ax.plot(eps, [r["test"][f"ndcg@{K}"] for r in rows], "o-", label="user-level DP (ml1m-private.toml)")
    public = [r["public_only_test"][f"ndcg@{K}"] for r in rows if r["public_only_test"]]
    if public:
        ax.axhline(public[0], color="tab:green", ls="--", label="public data only (pretrained)")
    ax.axhline(MAIN_JOB_TEST_NDCG, color="black", ls="-", lw=1, label="non-private main job")
    ax.axhline(0.7 * MAIN_JOB_TEST_NDCG, color="black", ls=":", lw=1, label="0.7x the main job")
    ax.axhline(POPULARITY_TEST_NDCG, color="gray", ls="--", label="popularity")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon (user-level, delta = 1/N)")
    ax.set_ylabel(f"test NDCG@{K}")
    ax.set_title("ML-1M: 5,738 protected one-user devices (+ 302 public)")
    _save_plot(fig, ax, out / "private-tradeoff.png")


def _save_plot(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _population(row: dict) -> int:
    if "population" in row:
        return row["population"]
    return json.loads((Path(row["run_dir"]) / "privacy.json").read_text())["clients"]


def plot_populations(out: Path) -> None:
    """NDCG@10 at epsilon 8 against the population: the real run and the projections."""
    from common.plots import plt  # on the Agg backend

    rows = [r for r in _results(out) if r["target_epsilon"] == 8.0]
    if len(rows) < 2:
        return
    rows.sort(key=_population)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([_population(r) for r in rows], [r["test"][f"ndcg@{K}"] for r in rows], "o-", label="epsilon 8")
    ax.axhline(MAIN_JOB_TEST_NDCG, color="black", lw=1, label="non-private main job")
    ax.axhline(0.95 * MAIN_JOB_TEST_NDCG, color="black", ls=":", lw=1, label="0.95x the main job")
    ax.set_xscale("log")
    ax.set_xlabel("population (users; beyond the real 5,738: projections)")
    ax.set_ylabel(f"test NDCG@{K}")
    ax.set_title("The noise a population needs, at the same cohort (~1,000)")
    _save_plot(fig, ax, out / "private-populations.png")


def table(out: Path) -> str:
    lines = [
        "| epsilon | population | test NDCG@10 | x main job | HR@10 | coverage@10 | long-tail@10 | public-only NDCG@10 "
        "| gain over public-only (95%) | z | audit --strict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(_results(out), key=lambda r: (r["simulated_population"] or 0, -r["target_epsilon"])):
        test, gain = r["test"], r["gain_over_public_only"] or {}
        low, high = gain.get("interval_95", [float("nan")] * 2)
        audit = r["audit"]
        lines.append(
            f"| {r['epsilon']:.2f} | {_population(r):,}{' (projection)' if r['projection'] else ''} "
            f"| **{test[f'ndcg@{K}']:.4f}** | {r['fraction_of_main_job']:.2f} | {test[f'hr@{K}']:.4f} "
            f"| {test.get(f'coverage@{K}', float('nan')):.3f} | {test.get(f'long-tail@{K}', float('nan')):.3f} "
            f"| {(r['public_only_test'] or {}).get(f'ndcg@{K}', float('nan')):.4f} "
            f"| {gain.get('mean', float('nan')):+.4f} [{low:+.4f}, {high:+.4f}] | {r['noise_multiplier']:.3f} "
            f"| {'pass' if audit and audit['strict_exit_code'] == 0 else 'FAIL' if audit else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("tradeoff", "populations", "table", "audit"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True)
        sub.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
        sub.add_argument("--sizes", type=int, nargs="+", default=[60_000, 600_000])
        sub.add_argument("--no-audit", action="store_true")
        sub.add_argument("--set", nargs="*", default=[], help="extra run-config key=value (TOML values)")
    args = parser.parse_args()
    if args.command == "table":
        plot(args.out)
        plot_populations(args.out)
        print(table(args.out))
        return
    if args.command == "audit":  # audit every non-projection run again (e.g. after an audit fix)
        rows = _results(args.out)
        for row in rows:
            if not row["simulated_population"]:
                row["audit"] = _audit(Path(row["run_dir"]))
        (args.out / "private-models.json").write_text(json.dumps(rows, indent=2))
        print(table(args.out))
        return
    import tomllib

    extra = tomllib.loads("\n".join(args.set))
    if args.command == "tradeoff":
        settings = [(eps, 0) for eps in args.epsilons]
    else:
        settings = [(8.0, size) for size in args.sizes]
    run_grid(args.out, settings, not args.no_audit, extra)
    print(table(args.out))


if __name__ == "__main__":
    main()
