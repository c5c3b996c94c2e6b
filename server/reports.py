"""Per-run plots of what people look at: validation NDCG/HR and training loss per round."""

from __future__ import annotations

from pathlib import Path

from common.plots import plot_curves


def write_reports(run_dir: Path, history: list[dict], k: int) -> None:
    evaluated = [r for r in history if "validation" in r]
    if evaluated:
        plot_curves(
            Path(run_dir) / "validation.png",
            [r["round"] for r in evaluated],
            {
                f"val ndcg@{k}": [r["validation"][f"ndcg@{k}"] for r in evaluated],
                f"val hr@{k}": [r["validation"][f"hr@{k}"] for r in evaluated],
            },
            xlabel="round",
            title="global model on validation",
        )
    losses = [r for r in history if "train-loss" in r]
    if losses:
        plot_curves(
            Path(run_dir) / "loss.png",
            [r["round"] for r in losses],
            {"mean client train loss": [r["train-loss"] for r in losses]},
            xlabel="round",
            title="training loss",
        )
