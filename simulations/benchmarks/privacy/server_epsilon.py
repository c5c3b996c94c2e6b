"""Server-side DP-FedAvg epsilon for given (z, m, N, rounds, delta), and the corrected figures of
the runs recorded before the replace-one sensitivity fix.

Before the fix the accountant took Flower's z (noise std / C) as the noise relative to the
sensitivity, which under replace-one is 2C: every server epsilon was for twice the noise that
was run. The recorded runs calibrated z to a target with that accounting; this script redoes
that calibration to recover the z each run used, then accounts it correctly (the run's RDP
accountant, z / 2) and gives the audit's independent lower bound. The models are unchanged:
only their epsilon was wrong.

    .venv/bin/python -m simulations.benchmarks.privacy.server_epsilon --recorded          # the BENCHMARKS rows
    .venv/bin/python -m simulations.benchmarks.privacy.server_epsilon --noise 1.0 --sampled 19 --population 20 \\
        --rounds 2 --delta 0.05
"""

from __future__ import annotations

import argparse

from common.audit.worst_pair import epsilon_lower_bound
from common.privacy.server_accounting import dpfedavg_epsilon

# (name, target epsilon, clients per round, clients, rounds, delta): the server-DP rows of BENCHMARKS.md
RECORDED = [(f"ML-1M cross-device server-eps{t:g}", t, 200, 5538, 100, 1 / 6040) for t in (1, 2, 4, 8)] + [
    ("ML-100K 10 silos server-eps8", 8.0, 10, 10, 3, 1 / 943)
]
# Their measured test NDCG@10 (simulations/results/audit.md) and the non-private cross-device run's.
RECORDED_NDCG = {
    "ML-1M cross-device server-eps1": 0.0034,
    "ML-1M cross-device server-eps2": 0.0131,
    "ML-1M cross-device server-eps4": 0.0196,
    "ML-1M cross-device server-eps8": 0.0211,
}
NON_PRIVATE_NDCG = 0.0209


def old_epsilon(z: float, *, m: int, n: int, rounds: int, delta: float) -> float:
    """What the accountant said before the fix: z taken as noise / sensitivity, i.e. noise 2z C."""
    return dpfedavg_epsilon(noise_multiplier=2 * z, num_sampled=m, population=n, rounds=rounds, delta=delta)


def old_calibration(target: float, **shape) -> float:
    """The noise multiplier the recorded runs used: the old bisection (to 0.1%) on the old epsilon."""
    low, high = 0.05, 1.0
    while old_epsilon(high, **shape) > target:
        low, high = high, high * 2
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if old_epsilon(mid, **shape) > target else (low, mid)
    return high


def figures(z: float, *, m: int, n: int, rounds: int, delta: float) -> dict:
    return {
        "z": z,
        "epsilon": dpfedavg_epsilon(noise_multiplier=z, num_sampled=m, population=n, rounds=rounds, delta=delta),
        "lower_bound": epsilon_lower_bound([(z, m, n)] * rounds, delta=delta),
    }


def plot_recorded(path: str, rows: dict[str, dict]) -> None:
    """NDCG@10 against epsilon (log axis): each run from its lower bound to its RDP claim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ndcg in RECORDED_NDCG.items():
        row = rows[name]
        ax.plot([row["lower_bound"], row["epsilon"]], [ndcg, ndcg], color="tab:blue", marker="|", markersize=12)
        ax.plot(row["epsilon"], ndcg, "o", color="tab:blue")
        ax.annotate(f"z = {row['z']:.2f}", (row["epsilon"], ndcg), textcoords="offset points", xytext=(5, -12))
    ax.axhline(NON_PRIVATE_NDCG, color="grey", linestyle="--", label="non-private cross-device run")
    ax.set_xscale("log")
    ax.set_xlabel("user-level epsilon (delta 1/6,040): bar from the audit's lower bound to the RDP claim")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("ML-1M cross-device, server-side DP-FedAvg (epsilons corrected to sensitivity 2C)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorded", action="store_true", help="correct the recorded BENCHMARKS rows")
    parser.add_argument("--noise", type=float, help="Flower's noise multiplier z (noise std / clipping norm)")
    parser.add_argument("--sampled", type=int, help="clients per round (m)")
    parser.add_argument("--population", type=int, help="clients (N)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--delta", type=float)
    parser.add_argument("--plot", help="with --recorded: write the corrected privacy-utility plot here (PNG)")
    args = parser.parse_args(argv)
    if not args.recorded:
        if None in (args.noise, args.sampled, args.population, args.rounds, args.delta):
            parser.error("give --recorded, or all of --noise --sampled --population --rounds --delta")
        if not (args.noise > 0 and 1 <= args.sampled <= args.population and args.rounds >= 1 and 0 < args.delta < 1):
            parser.error("need --noise > 0, 1 <= --sampled <= --population, --rounds >= 1, 0 < --delta < 1")
    print(
        "| run | z used | epsilon reported before the fix | epsilon (RDP, replace-one, sensitivity 2C) "
        "| independent lower bound |"
    )
    print("|---|---|---|---|---|")
    if args.recorded:
        rows = {}
        for name, target, m, n, rounds, delta in RECORDED:
            shape = dict(m=m, n=n, rounds=rounds, delta=delta)
            z = old_calibration(target, **shape)
            rows[name] = figures(z, **shape)
            print(
                f"| {name} | {z:.4f} | {old_epsilon(z, **shape):.3f} | {rows[name]['epsilon']:.2f} "
                f"| {rows[name]['lower_bound']:.2f} |",
                flush=True,
            )
        if args.plot:
            plot_recorded(args.plot, rows)
        return 0
    shape = dict(m=args.sampled, n=args.population, rounds=args.rounds, delta=args.delta)
    row = figures(args.noise, **shape)
    print(
        f"| given | {args.noise:.4f} | {old_epsilon(args.noise, **shape):.3f} | {row['epsilon']:.2f} "
        f"| {row['lower_bound']:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
