"""Pretraining on public data before a private federation: the model the devices fine-tune.

At a few thousand users, private collaborative signal under user-level DP stays near popularity;
deployed DP recommenders start from a model trained on public data (an opt-in cohort, another
service's users) and spend the privacy budget on what that model cannot know. This trains one
model centrally on public histories only, so the result is public (costs no epsilon) and is the
baseline every DP figure of the run is compared with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from common.model.models import SequenceRecommender
from common.training.step import StepOptions, train_epoch, window_dataset, window_loader


def pretrain(
    model: SequenceRecommender,
    sequences: list[np.ndarray],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    max_len: int,
    seed: int,
    options: StepOptions | None = None,
    validate: Callable[[SequenceRecommender], float] | None = None,
    patience: int = 3,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` in place on every window of `sequences` (Adam, `epochs` passes) and keep the
    epoch with the best `validate(model)` (public validation data), else the last. Returns the
    report: per-epoch loss and validation, the epoch kept, windows and seconds."""
    options = options or StepOptions()
    dataset = window_dataset(sequences, max_len, "all")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, best, best_state, best_epoch, stale = [], float("-inf"), None, epochs, 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss, _ = train_epoch(model, window_loader(dataset, batch_size, seed + epoch), optimizer, options)
        row = {"epoch": epoch, "loss": loss}
        if validate is not None:
            model.eval()
            row["validation"] = validate(model)
            if row["validation"] > best:
                best, best_epoch, stale = row["validation"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if validate is not None and stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "windows": len(dataset),
        "epochs_run": len(history),
        "epoch_kept": best_epoch if best_state is not None else len(history),
        "history": history,
        "seconds": time.perf_counter() - started,
    }
