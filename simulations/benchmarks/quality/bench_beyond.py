"""Beyond accuracy (issue 16): diversity, popularity bias and user-group gaps of finished runs, and
the accuracy / diversity trade-off of re-ranking.

For every run folder given (its model.pt and config, loaded as `fedseqrec audit` loads them) and
for the popularity baseline, on the test split of every user: accuracy, coverage, novelty, ILD
(training co-occurrence cosine, and for ML-1M also genre cosine from movies.dat), long-tail share,
Gini of exposure, average recommendation popularity, and per user group (activity; gender, age,
occupation from users.dat) each group's metrics and the gap between groups. Then, for one run,
MMR and long-tail re-ranking over a grid of lambda.

    FEDSEQREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m \\
        simulations.benchmarks.quality.bench_beyond --runs /work/runs/user-dp/* /work/runs/beyond-16a/central \\
        --curve-run /work/runs/beyond-16a/central --out simulations/results

Writes OUT/beyond-models.json, OUT/beyond-rerank.json and OUT/beyond-rerank.png, and prints the
markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from common.audit.report import load_run
from common.data.files import resolve_interactions
from common.data.load import load_sequence_data
from common.errors import DataError
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.metrics import user_ild
from common.evaluation.ranking import grouped_metrics, model_scores, popularity_scores, ranked_lists
from common.evaluation.reranking import build_reranker
from common.evaluation.user_groups import user_groups_for
from common.plots import plt  # the Agg backend, set there

K = 10
# Each re-ranker's lambda grid: MMR trades little until lambda ~ 0.5; the binary long-tail boost
# puts every tail candidate first once lambda >= 0.5 (the bonus then exceeds any relevance gap).
LAMBDAS = {"mmr": (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9), "long-tail": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)}


def movies_file(data_settings) -> Path | None:
    """ML-1M's movies.dat beside its interactions, or None (other data, or not there)."""
    if data_settings.data != "ml-1m":
        return None
    try:
        path = resolve_interactions("ml-1m", data_settings.data_dir, download=False).parent / "movies.dat"
    except DataError:
        return None
    return path if path.exists() else None


def genre_profiles(path: Path, item_ids: np.ndarray) -> sp.csr_matrix:
    """(N + 1, genres) L2-normalised binary genre vectors from a movies.dat (`ID::Title::A|B`), so
    that `user_ild` on them gives 1 - genre cosine. Items without genres get a zero row."""
    genres_of = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip():
            movie, _, genres = line.split("::")
            genres_of[int(movie)] = genres.split("|")
    names = sorted({g for gs in genres_of.values() for g in gs})
    column = {g: j for j, g in enumerate(names)}
    rows, cols = [], []
    for index, item in enumerate(item_ids):
        for g in genres_of.get(int(item), []) if index > 0 else []:
            rows.append(index)
            cols.append(column[g])
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(item_ids), len(names)))
    norms = np.sqrt(np.asarray(matrix.sum(axis=1)).ravel()).clip(min=1.0)
    return sp.csr_matrix(sp.diags(1.0 / norms) @ matrix)


def describe_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    config = json.loads((run_dir / "config.json").read_text())
    privacy = summary.get("privacy") or {}
    mechanism = "none"
    if config.get("dp-mode") == "server":
        mechanism = config.get("server-mechanism", "dp-fedavg")
    elif config.get("dp-mode") == "client":
        mechanism = "dp-sgd (client)"
    setting = "centralized" if not summary else ("cross-device" if config.get("partition") == "user" else "cross-silo")
    return {
        "setting": setting,
        "mechanism": mechanism,
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
    }


def evaluate_lists(score_fn, data, stats, groups, genres, rerank=None) -> dict:
    ranks, tops = ranked_lists(score_fn, data, "test", top_k=K, rerank=rerank)
    metrics, by_group = grouped_metrics(ranks, tops, K, stats, groups)
    if genres is not None:
        metrics[f"ild-genre@{K}"] = float(user_ild(tops, genres).mean())
    return {"test": metrics, "metrics_by_group": by_group}


def rounded(value, digits: int = 5):
    """Floats rounded for the results file (the group tables are large; 5 decimals is beyond their noise)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def markdown_tables(models: list[dict], curve: list[dict]) -> str:
    lines = [
        "| model | setting | DP | eps | NDCG@10 | HR@10 | coverage | novelty | ILD (co-occ.) | ILD (genre) "
        "| long-tail share | Gini | ARP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        t = m["test"]
        eps = f"{m['epsilon']:.0f}" if m.get("epsilon") else "–"
        genre = f"{t[f'ild-genre@{K}']:.3f}" if f"ild-genre@{K}" in t else "–"
        lines.append(
            f"| {m['name']} | {m['setting']} | {m['mechanism']} | {eps} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} "
            f"| {t['coverage@10']:.3f} | {t['novelty@10']:.2f} | {t['ild@10']:.3f} | {genre} "
            f"| {t['long-tail@10']:.4f} | {t['gini@10']:.3f} | {t['popularity@10']:.3f} |"
        )
    attributes = list(models[0]["metrics_by_group"])
    lines += [
        "",
        "NDCG@10 gap between user groups: highest - lowest group mean ± its standard error (groups of >= 30 users):",
        "",
    ]
    lines.append("| model | " + " | ".join(attributes) + " |")
    lines.append("|---|" + "---|" * len(attributes))
    for m in models:
        cells = []
        for a in attributes:
            gap = m["metrics_by_group"][a]["gaps"].get("ndcg@10")
            cells.append(f"{gap['gap']:.4f} ± {gap['gap_se']:.4f} ({gap['highest']} > {gap['lowest']})" if gap else "–")
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    for attribute in ("gender", "age", "activity"):
        if attribute not in attributes:
            continue
        names = list(models[0]["metrics_by_group"][attribute]["groups"])
        lines += ["", f"NDCG@10 per {attribute} group (users per group in the header):", ""]
        counts = [models[0]["metrics_by_group"][attribute]["groups"][g]["users"] for g in names]
        lines.append("| model | " + " | ".join(f"{g} ({n})" for g, n in zip(names, counts)) + " |")
        lines.append("|---|" + "---|" * len(names))
        for m in models:
            groups = m["metrics_by_group"][attribute]["groups"]
            lines.append(f"| {m['name']} | " + " | ".join(f"{groups[g]['ndcg@10']:.4f}" for g in names) + " |")
    if curve:
        lines += [
            "",
            "| re-ranker | lambda | NDCG@10 | HR@10 | ILD (co-occ.) | ILD (genre) | long-tail share "
            "| coverage | Gini |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for p in curve:
            t = p["test"]
            genre = f"{t[f'ild-genre@{K}']:.3f}" if f"ild-genre@{K}" in t else "–"
            lines.append(
                f"| {p['method']} | {p['lambda']} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} | {t['ild@10']:.3f} "
                f"| {genre} | {t['long-tail@10']:.4f} | {t['coverage@10']:.3f} | {t['gini@10']:.3f} |"
            )
    return "\n".join(lines)


def plot_tradeoff(path: Path, curve: list[dict], title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, method, metric, label in (
        (axes[0], "mmr", f"ild@{K}", "ILD@10 (1 - co-occurrence cosine)"),
        (axes[1], "long-tail", f"long-tail@{K}", "long-tail share of top-10 slots"),
    ):
        points = [p for p in curve if p["method"] == method]
        xs, ys = [p["test"][metric] for p in points], [p["test"][f"ndcg@{K}"] for p in points]
        ax.plot(xs, ys, marker="o")
        for n, (p, x, y) in enumerate(zip(points, xs, ys)):
            offset = (4, 4) if n % 2 == 0 else (4, -11)  # alternate above / below: close points stay legible
            ax.annotate(f"λ={p['lambda']}", (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"{method} re-ranking (top-100 candidates)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="run folders with model.pt and config.json")
    parser.add_argument("--curve-run", help="run folder whose model gets the re-ranking curve")
    parser.add_argument("--mmr-lambdas", nargs="+", type=float, default=list(LAMBDAS["mmr"]))
    parser.add_argument("--tail-lambdas", nargs="+", type=float, default=list(LAMBDAS["long-tail"]))
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--out", default="simulations/results")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = [Path(r) for r in args.runs if (Path(r) / "model.pt").exists()]
    first = load_run(runs[0])[1]
    data = load_sequence_data(first.data)
    stats = ItemStatistics.from_data(data)
    groups, source = user_groups_for(first, data)
    movies = movies_file(first.data)
    genres = genre_profiles(movies, data.item_ids) if movies is not None else None
    print(f"groups: {source}; genres: {'movies.dat' if genres is not None else 'none'}", flush=True)

    models = []
    started = time.perf_counter()
    for run in [None, *runs]:
        if run is None:
            name, info, score_fn = "popularity", {"setting": "–", "mechanism": "none", "epsilon": None}, None
            score_fn = popularity_scores(data.item_counts())
        else:
            model, config, _ = load_run(run)
            if config.data != first.data:
                raise DataError(f"{run}: its data settings differ from {runs[0]}'s; benchmark them separately")
            name, info, score_fn = run.name, describe_run(run), model_scores(model)
        row = {"name": name, "run_dir": str(run) if run else None, **info}
        row |= evaluate_lists(score_fn, data, stats, groups, genres)
        models.append(row)
        print(f"{name}: ndcg@10 {row['test']['ndcg@10']:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {"k": K, "groups": source, "long_tail": "least popular items holding 20% of training interactions"}
    (out / "beyond-models.json").write_text(json.dumps(rounded(report | {"models": models}), indent=1))

    curve = []
    if args.curve_run:
        model, _, _ = load_run(Path(args.curve_run))
        for method, lambdas in (("mmr", args.mmr_lambdas), ("long-tail", args.tail_lambdas)):
            base = build_reranker(method, 0.0, args.candidates, K, stats)  # mmr's similarity: built once
            for lam in lambdas:
                rerank = dataclasses.replace(base, lam=lam) if lam > 0 else None  # 0: the model's own lists
                point = {"method": method, "lambda": lam, "candidates": args.candidates}
                point |= evaluate_lists(model_scores(model), data, stats, {}, genres, rerank=rerank)
                del point["metrics_by_group"]
                curve.append(point)
                print(f"{method} lambda {lam}: ndcg@10 {point['test']['ndcg@10']:.4f}", flush=True)
        (out / "beyond-rerank.json").write_text(
            json.dumps(rounded({"run_dir": args.curve_run, "k": K, "points": curve}), indent=1)
        )
        plot_tradeoff(out / "beyond-rerank.png", curve, f"re-ranking {Path(args.curve_run).name} (ML-1M test)")
    print(markdown_tables(models, curve))


if __name__ == "__main__":
    main()
