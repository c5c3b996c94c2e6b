"""Centralized baselines on ML-1M (issue 2's benchmark): one `fedseqrec train` per setting.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.central.bench_centralized \
        --out runs/bench-centralized --settings sasrec:50 gru:50 lstm:50 sasrec:200

Each setting writes its own run folder (metrics.json, learning curve); a summary table is
printed and saved as summary.json / summary.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from common.config import RunConfig, read_toml
from fedseqrec.centralized import train_centralized

# the baseline's own settings
BASE = read_toml(Path(__file__).resolve().parents[3] / "simulations/configs/ml1m-centralized.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", nargs="+", default=["sasrec:50", "gru:50", "lstm:50"], help="model:max_len pairs")
    parser.add_argument("--epochs", type=int, default=BASE["epochs"])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for setting in args.settings:
        model, max_len = setting.split(":")
        flat = {**BASE, "model": model, "max-len": int(max_len), "epochs": args.epochs, "num-threads": args.threads}
        if model != "sasrec":
            flat.update({"num-layers": 1, "lr": 0.002})
        metrics = train_centralized(RunConfig.from_flat(flat), out / f"{model}-L{max_len}", show_progress=False)
        rows.append(
            {
                "model": model,
                "max_len": int(max_len),
                **{k: metrics["test"][k] for k in ("ndcg@10", "hr@10")},
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "seconds_per_epoch": metrics["train_seconds_per_epoch"],
                "wall_seconds": metrics["wall_seconds"],
                "peak_rss_mb": metrics["peak_rss_mb"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "summary.json").write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2)
    )
    lines = [
        "| model | max len | test NDCG@10 | test HR@10 | best epoch | s/epoch | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['max_len']} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | {r['best_epoch']} | "
        f"{r['seconds_per_epoch']:.1f} | {r['peak_rss_mb']:.0f} |"
        for r in rows
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
