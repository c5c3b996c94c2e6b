"""Continual learning on ML-1M: continue from the last global model on grown histories, vs scratch.

The data grows in time: the "old" data is the first `--old-share` (80%) of each user's interactions
in time order, the "grown" data is all of ML-1M. Three runs of `simulations/configs/ml1m-cohort.toml`
(cohort engine, 6,040 one-user devices), each in its own process, one after the other:

1. old:       `--old-rounds` rounds on the old data (the federation so far);
2. continued: `--new-rounds` rounds on the grown data with `init-model` = the old run's model.pt;
3. scratch:   `--new-rounds` rounds on the grown data from random weights (same rounds, same seed).

Test NDCG@10 / HR@10 of 2 and 3 are on the same test items (each user's last interaction of the
grown data). Results: OUT/continual.json (one row per run; a stopped benchmark resumes).

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.device.bench_continual \\
        --out runs/continual
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
from common.data.files import resolve_interactions
from common.data.interactions import TIME, USER, load_interactions

BASE = Path(__file__).resolve().parents[3] / "simulations/configs/ml1m-cohort.toml"


def write_old_interactions(path: Path, share: float) -> Path:
    """The first `share` of each user's ML-1M interactions (stable time order) as a CSV."""
    if path.exists():
        return path
    frame = load_interactions(resolve_interactions("ml-1m", ""))
    frame = frame.sort_values([USER, TIME], kind="stable")
    position = frame.groupby(USER).cumcount()
    size = frame.groupby(USER)[USER].transform("size")
    old = frame[position < (size * share).round().astype(int)]
    path.parent.mkdir(parents=True, exist_ok=True)
    old.to_csv(path, index=False)
    return path


def _config(out_dir: Path, rounds: int, data: str, eval_every: int, init_model: str = "") -> dict:
    flat = read_toml(BASE)
    flat.update({"out-dir": str(out_dir), "num-server-rounds": rounds, "data": data, "eval-every-rounds": eval_every})
    if init_model:
        flat["init-model"] = init_model
    return flat


def _run_one(flat: dict) -> float:
    code = "import json, sys; from fedseqrec.launch.simulate import simulate; simulate(json.loads(sys.argv[1]), 2)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flat)], env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"run {flat['out-dir']} failed with exit code {done.returncode}")
    return time.perf_counter() - started


def _round_zero(flat: dict) -> dict:
    """The old model, its item table regrown for the grown catalogue, evaluated on the grown data."""
    import torch

    from common.config import RunConfig
    from common.data.load import load_sequence_data
    from common.evaluation.ranking import evaluate, model_scores
    from common.model.warm_start import warm_start
    from common.training.step import model_for

    torch.set_num_threads(1)
    config = RunConfig.from_flat(flat)
    data = load_sequence_data(config.data)
    start = warm_start(config.model, config.data, config.train.seed, data.item_ids, flat["init-model"])
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed)
    model.load_arrays(start.arrays)
    model.eval()
    metrics = {split: evaluate(model_scores(model), data, split, top_k=10) for split in ("validation", "test")}
    return {
        "run": "old-model-on-grown-data",
        "data": flat["data"],
        "rounds": 0,
        "best_round": 0,
        "num_items": data.num_items,
        "test": metrics["test"],
        "validation": metrics["validation"],
        "init_model": start.report,
        "wall_seconds": 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--old-share", type=float, default=0.8)
    parser.add_argument("--old-rounds", type=int, default=300)
    parser.add_argument("--new-rounds", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    results_path = out / "continual.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {r["run"] for r in rows}
    old_data = write_old_interactions(out / "ml1m-old.csv", args.old_share)
    plan = [
        ("old", _config(out / "old", args.old_rounds, str(old_data), args.eval_every)),
        (
            "continued",
            _config(out / "continued", args.new_rounds, "ml-1m", args.eval_every, str(out / "old" / "model.pt")),
        ),
        ("scratch", _config(out / "scratch", args.new_rounds, "ml-1m", args.eval_every)),
    ]
    for name, flat in plan:
        if name in done:
            continue
        print(f"bench_continual: {name}: {flat['num-server-rounds']} rounds on {flat['data']}", flush=True)
        wall = _run_one(flat)
        summary = json.loads((Path(flat["out-dir"]) / "summary.json").read_text())
        rows.append(
            {
                "run": name,
                "data": flat["data"],
                "rounds": summary["rounds"],
                "best_round": summary["best_round"],
                "num_items": summary["num_items"],
                "test": summary["test"],
                "validation": summary["validation"],
                "init_model": summary.get("init_model"),
                "wall_seconds": wall,
            }
        )
        results_path.write_text(json.dumps(rows, indent=2))
    if "old-model-on-grown-data" not in done:  # what continuing starts from: round 0, no new training
        rows.append(_round_zero(plan[1][1]))
        results_path.write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(
            f"{row['run']:10s} rounds {row['rounds']:4d}  test ndcg@10 {row['test']['ndcg@10']:.4f}  "
            f"hr@10 {row['test']['hr@10']:.4f}  items {row['num_items']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
