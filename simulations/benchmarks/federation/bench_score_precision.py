"""The main job with `score-precision = float32` against `bfloat16`: wall time and test NDCG@10, paired.

Runs `fedseqrec federate --run-config simulations/configs/ml1m-cohort.toml` twice, quiet and one after
the other (each under `bench_cross_device run`, which times it and reads the process tree's memory),
once with `score-precision = "float32"` and once as shipped (bfloat16), then ranks the same test
users with both released models and gives the NDCG@10 difference with its 95% bootstrap interval
over users (`common.evaluation.paired`): "the same test NDCG@10 within noise" is an interval that
holds 0, not two means that look close.

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.federation.bench_score_precision \
        --out runs/score-precision
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.metrics import ranking_metrics
from common.evaluation.paired import paired_gain
from common.evaluation.ranking import model_scores, rank_targets
from common.model.checkpoint import load_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ml1m-cohort.toml"
K = 10


def timed_run(out: Path, precision: str) -> dict:
    """One main job through `bench_cross_device run`, its config's score-precision set; its JSON report."""
    config = out / f"ml1m-cohort-{precision}.toml"
    lines = [line for line in CONFIG.read_text().splitlines() if not line.startswith("score-precision")]
    config.write_text("\n".join([*lines, f'score-precision = "{precision}"', ""]))
    module = "simulations.benchmarks.federation.bench_cross_device"
    subprocess.run(
        [sys.executable, "-m", module, "run", "--run-config", str(config), "--out", str(out / precision)], check=True
    )
    return json.loads((out / precision / "bench-run.json").read_text())


def test_ranks(model_file: Path):
    model, _, metadata = load_model(model_file)
    data = load_sequence_data(RunConfig.from_flat(metadata["run_config"]).data)
    histories, targets = data.test_cases()
    ranks, _ = rank_targets(model_scores(model), histories, targets, num_items=data.num_items, top_k=K)
    return ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="score the runs already in --out, run nothing")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {
        p: json.loads((args.out / p / "bench-run.json").read_text()) if args.reuse else timed_run(args.out, p)
        for p in ("float32", "bfloat16")
    }
    ranks = {p: test_ranks(args.out / p / "run" / "model.pt") for p in runs}
    row = {
        p: {
            "wall_seconds": r["wall_seconds"],
            "peak_pss_mb_tree": r["peak_pss_mb_tree"],
            "peak_pss_mb_job": r.get("peak_pss_mb_job"),
            "identify_seconds": r["identify_seconds"],
            **{k: v for k, v in ranking_metrics(ranks[p], K).items() if k in (f"ndcg@{K}", f"hr@{K}")},
        }
        for p, r in runs.items()
    }
    row["bfloat16_over_float32_wall"] = row["bfloat16"]["wall_seconds"] / row["float32"]["wall_seconds"]
    row["ndcg_gain_bfloat16_minus_float32"] = paired_gain(ranks["float32"], ranks["bfloat16"], K)
    (args.out / "score-precision.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
