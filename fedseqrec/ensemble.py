"""`fedseqrec ensemble RUN_DIR... --out DIR`: combine trained runs at ranking time, choose on validation.

Candidates: each member alone, and each fusion (z-score mean, reciprocal-rank fusion) with equal
weights and with weights proportional to each member's validation NDCG@K. The candidate with the
best validation NDCG@K is chosen; test is computed once, for it and for the best single member (the
baseline an ensemble has to beat). With `--export` and an ensemble chosen, one ONNX graph that runs
every member and fuses their scores is written for the device (`fedseqrec recommend` reads it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.run_inputs import read_inputs, recorded_config
from common.errors import DataError
from common.evaluation.ranking import evaluate, model_scores
from common.model.checkpoint import load_model
from common.model.ensemble import METHODS, EnsembleScores, ensemble_scores
from common.outputs import staged_output

# Data settings that decide users, items and splits: members must agree on them.
_DATA_KEYS = ("data", "min-item-count", "min-user-count", "user-col", "item-col", "time-col")


def load_members(run_dirs: list[Path]) -> tuple[list, np.ndarray, RunConfig]:
    """(models, shared item_ids, the first member's run config); every member must share the catalogue."""
    if not run_dirs:
        raise DataError("no runs given; pass the out-dirs of two or more finished runs")
    models, first_ids, first_flat = [], None, None
    for run_dir in run_dirs:
        checkpoint = Path(run_dir) / "model.pt"
        if not checkpoint.is_file():
            raise DataError(f"{checkpoint}: no model file; pass the out-dir of a finished run")
        model, item_ids, metadata = load_model(checkpoint)
        flat = metadata.get("run_config")
        if not flat:
            raise DataError(f"{checkpoint}: no run_config in the model file; retrain it with this version")
        if first_ids is None:
            first_ids, first_flat = item_ids, flat
        elif not np.array_equal(item_ids, first_ids):
            raise DataError(f"{checkpoint}: its item catalogue differs from {run_dirs[0]}'s; members must share one")
        differing = [k for k in _DATA_KEYS if flat.get(k) != first_flat.get(k)]
        if differing:
            raise DataError(
                f"{run_dir}: data settings {', '.join(differing)} differ from {run_dirs[0]}'s; "
                "members must be evaluated on the same users and splits"
            )
        models.append(model)
    return models, first_ids, RunConfig.from_flat(first_flat, where=f"{run_dirs[0]}/model.pt run_config")


def check_same_data(run_dirs: list[Path]) -> None:
    """Members that recorded their interactions file (inputs.json) must have read the same content."""
    first = None
    for run_dir in run_dirs:
        record = read_inputs(run_dir)
        entry = (record or {}).get("inputs", {}).get("interactions")
        if entry is None:
            continue
        if first is None:
            first = (run_dir, entry)
        elif entry["sha256"] != first[1]["sha256"]:
            raise DataError(
                f"{run_dir}: trained on {entry['path']} (sha256 {entry['sha256'][:12]}...), {first[0]} on "
                f"{first[1]['path']} (sha256 {first[1]['sha256'][:12]}...); members must share their data"
            )


def run_ensemble(run_dirs: list[Path], out_dir: Path, *, export: bool = False, top_k: int = 10) -> dict:
    run_dirs = [Path(r) for r in run_dirs]
    models, item_ids, config = load_members(run_dirs)
    check_same_data(run_dirs)
    data = load_sequence_data(recorded_config(run_dirs[0], config, inputs=("interactions",)).data)
    if not np.array_equal(data.item_ids, item_ids):
        raise DataError(f"{config.data.data}: its item catalogue differs from the members'; is it the same data?")
    kwargs = dict(top_k=top_k, mask_seen=config.train.mask_seen, batch_size=config.train.eval_batch_size)
    key = f"ndcg@{top_k}"
    with torch.no_grad():
        singles = [evaluate(model_scores(m), data, "validation", **kwargs) for m in models]
        member_ndcg = np.array([s[key] for s in singles])
        weightings = {"equal": np.full(len(models), 1.0 / len(models)), "validation": member_ndcg / member_ndcg.sum()}
        candidates = {
            f"{method}/{name}": {"method": method, "weighting": name, "weights": weights.tolist()}
            for method in METHODS
            for name, weights in weightings.items()
        }
        for candidate in candidates.values():
            score = ensemble_scores(models, candidate["weights"], candidate["method"])
            candidate["validation"] = evaluate(score, data, "validation", **kwargs)
        best_single = int(np.argmax(member_ndcg))
        chosen = max(candidates, key=lambda name: candidates[name]["validation"][key])
        ensemble_wins = candidates[chosen]["validation"][key] > member_ndcg[best_single]
        pick = candidates[chosen]
        test = {
            "chosen": evaluate(ensemble_scores(models, pick["weights"], pick["method"]), data, "test", **kwargs)
            if ensemble_wins
            else None,
            "best_single": evaluate(model_scores(models[best_single]), data, "test", **kwargs),
        }
    report = {
        "members": [
            {"run_dir": str(r), "arch": m.config.arch, "max_len": m.config.max_len, "validation": s}
            for r, m, s in zip(run_dirs, models, singles)
        ],
        "candidates": candidates,
        "chosen": chosen if ensemble_wins else f"single:{run_dirs[best_single]}",
        "ensemble_wins_on_validation": bool(ensemble_wins),
        "best_single_member": str(run_dirs[best_single]),
        "test": test,
        "selection": f"validation {key}; test computed once, for the chosen ensemble and the best single member",
        "num_users": data.num_users,
        "num_items": data.num_items,
    }
    with staged_output(out_dir, "--out") as stage:  # out_dir appears whole, or stays as it was
        if export:
            report["export"] = export_ensemble(models, pick, item_ids, stage / "export", report, ensemble_wins)
            if report["export"].get("path"):  # where the file will be, not where it was staged
                report["export"]["path"] = str(Path(out_dir) / "export" / Path(report["export"]["path"]).name)
        (stage / "ensemble.json").write_text(json.dumps(report, indent=2))
    return report


def export_ensemble(models, pick: dict, item_ids: np.ndarray, out_dir: Path, report: dict, wins: bool) -> dict:
    """One ONNX graph running every member and the fusion; verified against the PyTorch ensemble."""
    from common.model.export import (
        FORMAT,
        INPUT,
        ITEMS_FILE,
        METADATA_FILE,
        OPSET,
        OUTPUT,
        _set_metadata,
        export_scores_module,
        exportable,
        verify_scores_module,
    )

    if not wins:
        return {"written": False, "reason": "no ensemble beat the best single member on validation; export that run"}
    module = EnsembleScores([exportable(m) for m in models], pick["weights"], pick["method"]).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    export_scores_module(module, path, max_len=module.max_len, num_items=module.num_items)
    reference = EnsembleScores(models, pick["weights"], pick["method"]).eval()
    # rrf: a near-tie that the graph and torch order differently moves each of the two items'
    # 1/(k + rank) by < 1/k^2 (3e-4, within the export's tolerance) times the member's weight (<= 1).
    max_error = verify_scores_module(reference, path, max_len=module.max_len, num_items=module.num_items)
    metadata = {
        "format": FORMAT,
        "arch": "ensemble",
        "members": [{"arch": m.config.arch, "max_len": m.config.max_len} for m in models],
        "fusion": {k: pick[k] for k in ("method", "weighting", "weights")},
        "max_len": module.max_len,
        "num_items": module.num_items,
        "input": INPUT,
        "output": OUTPUT,
        "padding_index": 0,
        "items_file": ITEMS_FILE,
        "popularity": "none: an ensemble export has no popularity vector (empty histories use the graph)",
        "training_runs": [m["run_dir"] for m in report["members"]],
        "export": {"torch": torch.__version__, "onnx_opset": OPSET, "max_abs_error_vs_torch": max_error},
    }
    _set_metadata(path, metadata)
    (out_dir / ITEMS_FILE).write_text(json.dumps({"item_ids": [int(i) for i in item_ids], "popularity": None}))
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return {"written": True, "path": str(path), "max_abs_error_vs_torch": max_error}
