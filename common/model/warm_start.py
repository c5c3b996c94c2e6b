"""Start a run from a previous run's model (continual learning): weights kept, item table regrown.

A new run on grown data usually has a different item catalogue: new items appear, and items can
fall below `min-item-count` or out of the data. Rows of the item table are therefore matched by
original item ID, not by index: an item in both catalogues keeps its learned row, an item new to
this run gets a fresh row from this run's seeded initialisation (the same as a from-scratch run
would give it), and an item the new catalogue lacks is dropped. Every other weight must have the
same shape; a model of another architecture or size is refused with the fields that differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import DataSettings, ModelSettings
from common.errors import ConfigError, DataError
from common.training.step import model_for

ITEM_TABLE = "item_emb.weight"
# Fields of the model config that decide weight shapes (num_items is handled by regrowing the table;
# dropout has no weights).
_SHAPE_FIELDS = ("arch", "emb_dim", "num_layers", "num_heads")


@dataclass(frozen=True)
class WarmStart:
    arrays: dict[str, torch.Tensor]
    report: dict  # path, sha256, items kept / new / dropped


def _shape_fields(arch: str) -> tuple[str, ...]:
    # SASRec's position table has max_len rows; an RNN's weights do not depend on max_len or SASRec's heads.
    return (*_SHAPE_FIELDS, "max_len") if arch == "sasrec" else ("arch", "emb_dim", "hidden_dim", "num_layers")


def warm_start(
    model: ModelSettings, data: DataSettings, seed: int, item_ids: np.ndarray, path: str | Path
) -> WarmStart:
    """This run's initial weights from the model.pt at `path`, fitted to this run's model and data
    settings and its catalogue `item_ids`; `seed` initialises the rows of new items."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'init-model': {path} is not a file; give the model.pt of a finished run")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        old_config, old_arrays, old_ids = blob["model_config"], blob["arrays"], blob["item_ids"].numpy()
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise DataError(f"{path}: not a fedseqrec model.pt ({type(exc).__name__}: {exc})") from exc
    new_model = model_for(model, data, len(item_ids) - 1, seed=seed, item_ids=item_ids)  # fresh rows: a scratch run's
    new_config = new_model.config.__dict__
    differ = [
        f"{name} {old_config.get(name)!r} (model) != {new_config[name]!r} (run)"
        for name in _shape_fields(new_config["arch"])
        if old_config.get(name) != new_config[name]
    ]
    if differ:
        raise ConfigError(
            f"config key 'init-model': {path} does not fit this run's model: {'; '.join(differ)}; "
            "set the run's model keys to the model's, or start from scratch"
        )
    if len(old_ids) != old_config["num_items"] + 1:
        raise DataError(f"{path}: {len(old_ids)} item IDs for a model of {old_config['num_items']} items + padding")
    arrays = {k: v.clone() for k, v in new_model.arrays().items()}
    for key, value in old_arrays.items():
        if key == ITEM_TABLE:
            continue
        if key not in arrays or arrays[key].shape != value.shape:
            raise ConfigError(
                f"config key 'init-model': {path} has weight {key} {tuple(value.shape)}, which this run's model lacks"
            )
        arrays[key] = value.clone()
    kept, new, dropped = _regrow_items(arrays[ITEM_TABLE], old_arrays[ITEM_TABLE], old_ids, np.asarray(item_ids))
    if kept == 0:
        raise DataError(
            f"config key 'init-model': {path} shares no item with this run's catalogue "
            f"({len(item_ids) - 1} items); it was trained on other data"
        )
    report = {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "items_kept": kept,
        "items_new": new,
        "items_dropped": dropped,
    }
    return WarmStart(arrays, report)


def _regrow_items(table: torch.Tensor, old_table: torch.Tensor, old_ids: np.ndarray, new_ids: np.ndarray):
    """Copy old rows into `table` (in place) where the original item ID matches; returns counts."""
    order = np.argsort(old_ids[1:], kind="stable")
    sorted_ids = old_ids[1:][order]
    pos = np.searchsorted(sorted_ids, new_ids[1:]).clip(max=len(sorted_ids) - 1)  # (N_new,)
    found = sorted_ids[pos] == new_ids[1:]  # (N_new,)
    new_rows = np.flatnonzero(found) + 1
    old_rows = order[pos[found]] + 1
    with torch.no_grad():
        table[torch.as_tensor(new_rows)] = old_table[torch.as_tensor(old_rows)]
        table[0].zero_()
    kept = int(found.sum())
    return kept, int((~found).sum()), len(old_ids) - 1 - kept
