"""What item side features buy, overall and on cold / long-tail targets (issue 15's benchmark).

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.quality.bench_item_features \
        --pairs runs/sasrec:runs/sasrec-features runs/sasrec-s43:runs/sasrec-features-s43 \
        --out simulations/results/item-features-ml100k.json

Each pair is two finished runs (centralized or federated) that differ only in `item-features` (or
in the run-config key `--differs-in` names, e.g. `augment`: checked).
Both models are evaluated here, on the same test targets, in one process. Segments of test users
by their target item's number of training interactions (train parts of leave-one-out):
- cold: fewer than `--cold` interactions;
- long-tail: outside the head, the most-interacted items that together hold 80% of the training
  interactions (the Pareto split used in long-tail recommendation papers).
Each segment reports NDCG@10 / HR@10 of both models and a paired bootstrap 95% interval of the
NDCG@10 difference (same users resampled for both; a fixed seed, this is a measurement, not DP).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.metrics import ranking_metrics
from common.evaluation.paired import paired_gain
from common.evaluation.ranking import model_scores, rank_targets
from common.model.checkpoint import load_model

K = 10


def segments(item_counts: np.ndarray, targets: np.ndarray, cold: int) -> dict[str, np.ndarray]:
    """Boolean masks over test users: all, cold, long-tail."""
    counts = item_counts[1:]
    order = np.sort(counts)[::-1]
    head_size = int(np.searchsorted(np.cumsum(order) / order.sum(), 0.8)) + 1
    head_threshold = order[head_size - 1]  # items with fewer interactions than the head's last are tail
    target_counts = item_counts[targets]
    return {
        "all": np.ones(len(targets), dtype=bool),
        f"cold (< {cold} train interactions)": target_counts < cold,
        f"long-tail (< {head_threshold}: outside the 80% head)": target_counts < head_threshold,
    }


def ranks_on_test(run_dir: Path):
    model, item_ids, metadata = load_model(Path(run_dir) / "model.pt")
    config = RunConfig.from_flat(metadata["run_config"], where=f"{run_dir}/model.pt")
    data = load_sequence_data(config.data)
    if not np.array_equal(data.item_ids, item_ids):
        raise SystemExit(f"{run_dir}: model catalogue differs from its data")
    histories, targets = data.test_cases()
    ranks, _ = rank_targets(model_scores(model), histories, targets, num_items=data.num_items, top_k=K)
    return ranks, targets, data, config


def paired_bootstrap(base: np.ndarray, featured: np.ndarray) -> list[float]:
    """95% interval of mean(featured - base) NDCG@K over resampled users."""
    return paired_gain(base, featured, K)["interval_95"]


def compare(base_dir: Path, featured_dir: Path, cold: int, key: str = "item-features") -> dict:
    base, targets, data, base_config = ranks_on_test(base_dir)
    featured, featured_targets, _, featured_config = ranks_on_test(featured_dir)
    assert np.array_equal(targets, featured_targets)
    keys = sorted(key.split(","))  # "server-lr,local-lr": runs that differ in exactly these keys
    if keys == ["item-features"] and (base_config.data.item_features or not featured_config.data.item_features):
        raise SystemExit(
            f"pair {base_dir}:{featured_dir}: the first run must be without item-features, the second with"
        )
    first, second = ({**c.to_flat(), "out-dir": ""} for c in (base_config, featured_config))
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    if differ != keys:
        raise SystemExit(f"pair {base_dir}:{featured_dir}: the runs must differ in {key} alone, not in {differ}")
    rows = {}
    for name, mask in segments(data.item_counts(), targets, cold).items():
        rows[name] = {
            "users": int(mask.sum()),
            "base": {m: v for m, v in ranking_metrics(base[mask], K).items() if m in (f"ndcg@{K}", f"hr@{K}")},
            "featured": {m: v for m, v in ranking_metrics(featured[mask], K).items() if m in (f"ndcg@{K}", f"hr@{K}")},
            "ndcg_gain_95ci": paired_bootstrap(base[mask], featured[mask]),
        }
    return {
        "base": str(base_dir),
        "featured": str(featured_dir),
        "differs-in": {k: second[k] for k in keys},
        "features": featured_config.data.item_features,
        **rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", nargs="+", required=True, help="BASE_RUN:FEATURED_RUN pairs")
    parser.add_argument("--cold", type=int, default=20, help="cold: targets with fewer training interactions")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument(
        "--differs-in",
        default="item-features",
        metavar="KEY",
        help="the run-config key(s) each pair differs in, comma-separated",
    )
    args = parser.parse_args(argv)
    pairs = (pair.split(":") for pair in args.pairs)
    results = [compare(Path(b), Path(f), args.cold, args.differs_in) for b, f in pairs]
    Path(args.out).write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "pairs": results}, indent=2)
    )
    for result in results:
        print(f"{result['base']} vs {result['featured']} ({result['differs-in']})")
        for name, row in result.items():
            if isinstance(row, dict) and "ndcg_gain_95ci" in row:  # a segment of users
                b, f, ci = row["base"], row["featured"], row["ndcg_gain_95ci"]
                print(
                    f"  {name:48s} users {row['users']:5d}  NDCG@10 {b['ndcg@10']:.4f} -> {f['ndcg@10']:.4f} "
                    f"[{ci[0]:+.4f}, {ci[1]:+.4f}]  HR@10 {b['hr@10']:.4f} -> {f['hr@10']:.4f}"
                )


if __name__ == "__main__":
    from common.errors import FedSeqRecError

    try:
        main()
    except FedSeqRecError as exc:  # a missing or foreign run folder: one line, as the CLI says it
        print(f"bench_item_features: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
