"""How sure the ensemble's gain is, and what it costs on the device (issue 15's benchmark).

    FEDSEQREC_DATA_DIR=../shared/data .venv/bin/python -m simulations.benchmarks.quality.bench_ensemble \
        runs/ensemble-3/ensemble.json --out simulations/results/ensemble-ml100k.json

Reads what `fedseqrec ensemble --export` chose, ranks the test targets with the chosen ensemble and
with the best single member (both chosen on validation), and reports a paired bootstrap 95%
interval of the NDCG@10 difference. With an exported ensemble it also exports the best single
member and times both ONNX graphs for one user (batch 1, one thread, median of `--calls`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.metrics import ranking_metrics
from common.evaluation.ranking import model_scores, rank_targets
from common.model.checkpoint import load_model
from common.model.ensemble import ensemble_scores
from common.model.export import export_run
from simulations.benchmarks.quality.bench_item_features import K, paired_bootstrap


def median_ms(path: Path, max_len: int, num_items: int, calls: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    times = []
    for _ in range(calls):
        items = rng.integers(1, num_items + 1, size=(1, max_len))
        start = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: items})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", help="ensemble.json written by `fedseqrec ensemble`")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    if not report["ensemble_wins_on_validation"]:
        raise SystemExit(f"{args.report}: no ensemble won on validation; nothing to compare")
    run_dirs = [Path(m["run_dir"]) for m in report["members"]]
    models = [load_model(r / "model.pt")[0] for r in run_dirs]
    _, item_ids, metadata = load_model(run_dirs[0] / "model.pt")
    data = load_sequence_data(RunConfig.from_flat(metadata["run_config"]).data)
    histories, targets = data.test_cases()
    pick = report["candidates"][report["chosen"]]
    best = run_dirs.index(Path(report["best_single_member"]))
    rank = dict(histories=histories, targets=targets, num_items=data.num_items, top_k=K)
    fused, _ = rank_targets(ensemble_scores(models, pick["weights"], pick["method"]), **rank)
    single, _ = rank_targets(model_scores(models[best]), **rank)
    result = {
        "members": [str(r) for r in run_dirs],
        "chosen": report["chosen"],
        "best_single": str(run_dirs[best]),
        "test_users": len(targets),
        "ensemble": {k: v for k, v in ranking_metrics(fused, K).items() if k in (f"ndcg@{K}", f"hr@{K}")},
        "single": {k: v for k, v in ranking_metrics(single, K).items() if k in (f"ndcg@{K}", f"hr@{K}")},
        "ndcg_gain_95ci": paired_bootstrap(single, fused),
    }
    export = report.get("export", {})
    if export.get("written"):
        with tempfile.TemporaryDirectory() as tmp:
            export_run(run_dirs[best], Path(tmp), item_counts=data.item_counts())
            single_ms = median_ms(Path(tmp) / "model.onnx", models[best].config.max_len, data.num_items, args.calls)
        max_len = max(m.config.max_len for m in models)
        result["device_ms_per_call"] = {
            "single": single_ms,
            "ensemble": median_ms(Path(export["path"]), max_len, data.num_items, args.calls),
        }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
