"""Centralized baseline: train one model on all users, select on validation, report test."""

from __future__ import annotations

import copy
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.run_inputs import record_inputs
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.ranking import evaluate, evaluate_by_group, model_scores, popularity_scores
from common.evaluation.reranking import reranker_for
from common.evaluation.user_groups import user_groups_for
from common.model.checkpoint import save_model
from common.outputs import make_output_dir
from common.plots import plot_curves
from common.training.augmentation import augmentation_for, maybe_augmented
from common.training.step import (
    StepOptions,
    lr_factor,
    model_for,
    set_seed,
    train_epoch,
    window_dataset,
    window_loader,
)
from fedseqrec.console import TrainingProgress


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_centralized(
    config: RunConfig,
    out_dir: Path,
    show_progress: bool = True,
    *,
    report_test: bool = True,
    on_validation: Callable[[int, float], bool] | None = None,
) -> dict:
    """Train, select the epoch on validation NDCG@k, report test (unless `report_test` is False: a
    tuner's trials compute validation only). `on_validation(epoch, value)` sees every validation
    figure; returning True stops training there, as early stopping would (a tuner's pruner)."""
    out_dir = Path(out_dir)
    train, data_cfg = config.train, config.data
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    set_seed(train.seed)
    data = load_sequence_data(data_cfg)  # bad data stops here, before the results folder exists
    groups, groups_source = user_groups_for(config, data)  # ... and so does a bad users file
    make_output_dir(out_dir, "--out")
    record_inputs(out_dir, config)  # where each input file was, with its sha256 (export, audit, ... use it)
    (out_dir / "preprocessing.json").write_text(json.dumps(data.report, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config.to_flat(), indent=2))

    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids).to(
        train.device
    )
    dataset = window_dataset(data.train_sequences(), data_cfg.max_len, data_cfg.train_windows)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    augmentation = augmentation_for(config.train, data.num_items)
    options = StepOptions(
        loss=config.model.loss, num_negatives=config.model.num_negatives, reduction=config.model.loss_reduction
    )
    stats = ItemStatistics.from_data(data)  # training statistics the beyond-accuracy metrics use
    eval_kwargs = dict(
        top_k=train.top_k,
        mask_seen=train.mask_seen,
        batch_size=train.eval_batch_size,
        device=train.device,
        rerank=reranker_for(train, stats),
        stats=stats,
    )
    key = f"ndcg@{train.top_k}"
    history, best, best_state, best_epoch, stale = [], float("-inf"), None, 0, 0
    log = open(out_dir / "metrics.jsonl", "w")
    started = time.perf_counter()
    train_seconds = 0.0
    epoch = 0
    interrupted = False
    stopped_by = ""
    progress = TrainingProgress(train.epochs, key, enabled=show_progress)
    try:
        for epoch in range(1, train.epochs + 1):
            loader = window_loader(dataset, train.batch_size, train.seed + epoch)
            lr = train.lr * lr_factor(epoch, train.epochs, train.lr_schedule, train.lr_warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch_start = time.perf_counter()
            bar = progress.start_epoch(epoch, len(loader))
            batches = maybe_augmented(loader, augmentation, [train.seed, epoch])
            loss, _ = train_epoch(model, batches, optimizer, options, train.device, progress=bar)
            train_seconds += time.perf_counter() - epoch_start
            row = {"epoch": epoch, "loss": loss, "lr": lr}
            if epoch % train.eval_every == 0 or epoch == train.epochs:
                model.eval()
                row["validation"] = evaluate(model_scores(model), data, "validation", **eval_kwargs)
                if row["validation"][key] > best:
                    best, best_epoch, stale = row["validation"][key], epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            progress.end_epoch(row)
            if stale >= train.patience:
                break
            if on_validation is not None and "validation" in row and on_validation(epoch, row["validation"][key]):
                stopped_by = "on_validation"
                break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what was learned, report on the best epoch
        interrupted = True  # the caller says so (`fedseqrec train` prints one line)
    finally:
        progress.close()  # the progress line stays on screen, ended, above what follows
    log.close()
    if best_state is None:
        raise KeyboardInterrupt("stopped before the first validation: nothing to report")

    model.load_state_dict(best_state)
    model.eval()
    validation = evaluate(model_scores(model), data, "validation", **eval_kwargs)
    splits = ("validation", "test") if report_test else ("validation",)
    test, by_group = (
        evaluate_by_group(model_scores(model), data, "test", groups, **eval_kwargs) if report_test else (None, None)
    )
    counts = data.item_counts()
    popularity = {split: evaluate(popularity_scores(counts), data, split, **eval_kwargs) for split in splits}
    save_model(out_dir / "model.pt", model, data.item_ids, run_config=config.to_flat(), best_epoch=best_epoch)
    metrics = {
        "validation": validation,
        "test": test,
        "popularity_baseline": popularity,
        "metrics_by_group": {"split": "test", "source": groups_source, "attributes": by_group},
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "interrupted": interrupted,
        "stopped_by": stopped_by or ("patience" if stale >= train.patience else ""),
        "num_users": data.num_users,
        "num_items": data.num_items,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds_per_epoch": train_seconds / max(epoch, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    evaluated = [r for r in history if "validation" in r]
    plot_curves(
        out_dir / "learning_curve.png",
        [r["epoch"] for r in evaluated],
        {
            f"val {key}": [r["validation"][key] for r in evaluated],
            f"val hr@{train.top_k}": [r["validation"][f"hr@{train.top_k}"] for r in evaluated],
        },
        right={"train loss": [r["loss"] for r in evaluated]},
        right_label="loss",
        xlabel="epoch",
        title=f"{config.model.model} on {Path(data_cfg.data).name}",
    )
    return metrics
