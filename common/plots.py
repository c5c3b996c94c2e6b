"""PNG plots of curves people look at (learning curves, per-round metrics, epsilon)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display), imported on first use: ~0.4 s
    that a ServerApp, started for every run, pays only when it draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def __getattr__(name: str):
    if name == "plt":  # `from common.plots import plt`
        return pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plot_curves(
    path: Path,
    x: list,
    series: dict[str, list],
    *,
    xlabel: str,
    title: str,
    right: dict[str, list] | None = None,
    right_label: str = "",
) -> None:
    """Line plot of named series against x; `right` series go on a second y axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        ax.plot(x[: len(ys)], ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        twin = ax.twinx()
        for name, ys in right.items():
            twin.plot(x[: len(ys)], ys, linestyle="--", color="grey", label=name)
        twin.set_ylabel(right_label)
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
