"""Re-ranking on the device, measured: every test user of a run is served by the exported model
through the on-device runner (`client.ondevice`, onnxruntime and numpy), plain and re-ranked, and
scored with the evaluation's own metrics (NDCG@10 on the held-out item; ILD by the training
co-occurrence cosine, long-tail share, coverage, Gini of exposure).

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.device.bench_device_rerank \\
        --run runs/ml1m-cohort --out runs/device-rerank

The plain row must match the run's own test figures (same model, same masking of seen items):
the benchmark checks that the device path and the server's evaluation agree before it compares.
Writes OUT/device-rerank.json and OUT/device-rerank.png (NDCG against ILD and long-tail share).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.metrics import all_metrics
from common.model.export import export_run


def serve(runner, data, histories, targets, k: int, method: str, lam: float, candidates: int):
    """(ranks, top items as model indices) of every test user, served on the device."""
    tops = np.zeros((len(targets), k), dtype=np.int64)
    ranks = np.full(len(targets), k, dtype=np.int64)  # k: not in the list
    for user, (history, target) in enumerate(zip(histories, targets)):
        result = runner.recommend(data.item_ids[history], k=k, rerank=method, lam=lam, candidates=candidates)
        top, _ = runner.to_indices(result.items)
        tops[user, : len(top)] = top
        hit = np.flatnonzero(top == target)
        if hit.size:
            ranks[user] = hit[0]
    return ranks, tops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run's folder (model.pt, config.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    from client.ondevice import OnDeviceRecommender

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = RunConfig.from_flat(json.loads((run / "config.json").read_text()), where=str(run / "config.json"))
    data = load_sequence_data(config.data)
    stats = ItemStatistics.from_data(data)
    export_dir = out / "export"
    if not export_dir.exists():
        export_run(run, export_dir)
    runner = OnDeviceRecommender.load(export_dir)
    histories, targets = data.test_cases()
    settings = [("none", 0.0)] + [(m, lam) for m in ("mmr", "long-tail") for lam in args.lambdas]
    rows = []
    for method, lam in settings:
        started = time.perf_counter()
        ranks, tops = serve(runner, data, histories, targets, args.k, method, lam, args.candidates)
        seconds = time.perf_counter() - started
        metrics = all_metrics(ranks, tops, args.k, stats)
        per_user = 1000 * seconds / len(targets)
        rows.append({"rerank": method, "lambda": lam, "users": len(targets), "ms_per_user": per_user, **metrics})
        print(
            f"bench_device_rerank: {method} {lam:g}: NDCG@{args.k} {metrics[f'ndcg@{args.k}']:.4f}  "
            f"ILD {metrics[f'ild@{args.k}']:.3f}  long-tail {metrics[f'long-tail@{args.k}']:.3f}  "
            f"{per_user:.2f} ms/user",
            flush=True,
        )
    summary = run / "summary.json" if (run / "summary.json").exists() else run / "metrics.json"
    reported = json.loads(summary.read_text())["test"][f"ndcg@{args.k}"]
    plain = rows[0][f"ndcg@{args.k}"]
    agreement = {"run_reported_test_ndcg": reported, "device_plain_test_ndcg": plain}
    (out / "device-rerank.json").write_text(json.dumps({"agreement": agreement, "rows": rows}, indent=2))
    _plot(rows, args.k, out / "device-rerank.png")
    print(f"bench_device_rerank: plain NDCG@{args.k} on the device {plain:.4f}, the run reported {reported:.4f}")
    return 0


def _plot(rows: list[dict], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, (f"ild@{k}", f"long-tail@{k}")):
        for method, marker in (("mmr", "o"), ("long-tail", "s")):
            points = [rows[0]] + [r for r in rows if r["rerank"] == method]
            ax.plot([r[metric] for r in points], [r[f"ndcg@{k}"] for r in points], marker=marker, label=method)
            for r in points[1:]:
                ax.annotate(f"{r['lambda']:g}", (r[metric], r[f"ndcg@{k}"]), fontsize=7)
        ax.set_xlabel(metric)
        ax.set_ylabel(f"test NDCG@{k}")
        ax.legend()
    fig.suptitle("re-ranking on the device (lambda labelled; first point: plain)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
