"""Validation curves of several centralized runs side by side (issue 15's L200 recipe search).

    python -m simulations.benchmarks.central.compare_curves "pre-LN, recency=runs/a/metrics.jsonl" \
        "original block=runs/b" \
        --out simulations/results/sasrec-L200-recipes.png --goal 0.18

Each argument is LABEL=PATH (a run folder or its metrics.jsonl); the plot shows validation
NDCG@10 per epoch, with an optional horizontal goal line, and a table of the curves at common
epochs is printed (what BENCHMARKS.md quotes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.plots import plot_curves

KEY = "ndcg@10"


def read_curve(path: Path) -> dict[int, float]:
    """epoch -> validation NDCG@10 of a metrics.jsonl (or a run folder holding one)."""
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl here; pass a run folder or its metrics.jsonl")
    curve = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if KEY in row.get("validation", {}):
            curve[int(row["epoch"])] = float(row["validation"][KEY])
    return curve


def parse_run(argument: str) -> tuple[str, Path]:
    label, sep, path = argument.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"{argument!r}: expected LABEL=PATH")
    return label, Path(path)


def table(curves: dict[str, dict[int, float]], every: int = 5) -> str:
    last = max(max(c) for c in curves.values())
    epochs = [e for e in range(every, last + 1, every)]
    lines = ["| epoch | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for epoch in epochs:
        cells = [f"{c[epoch]:.4f}" if epoch in c else "-" for c in curves.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    best = [f"{max(c.values()):.4f} ({max(c, key=c.get)})" for c in curves.values()]
    lines.append("| best (epoch) | " + " | ".join(best) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--goal", type=float, default=None, help="draw a horizontal goal line at this NDCG@10")
    parser.add_argument("--title", default="SASRec on ML-1M, max length 200: validation NDCG@10")
    args = parser.parse_args(argv)
    try:
        curves = {label: read_curve(path) for label, path in map(parse_run, args.runs)}
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as error:
        print(f"compare_curves: error: {error}", file=sys.stderr)
        return 2
    empty = [label for label, curve in curves.items() if not curve]
    if empty:
        print(f"compare_curves: error: no validation rows in {', '.join(empty)}", file=sys.stderr)
        return 2
    last = max(max(c) for c in curves.values())
    epochs = list(range(1, last + 1))
    series = {label: [curve.get(e, float("nan")) for e in epochs] for label, curve in curves.items()}
    if args.goal is not None:
        series[f"goal {args.goal}"] = [args.goal] * len(epochs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_curves(Path(args.out), epochs, series, xlabel="epoch", title=args.title)
    print(table(curves))
    return 0


if __name__ == "__main__":
    sys.exit(main())
