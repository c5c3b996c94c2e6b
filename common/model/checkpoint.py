"""Save and load a model with everything needed to use it: config, weights, item mapping."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic_files import atomic_write
from common.errors import DataError, brief
from common.model.models import ModelConfig, SequenceRecommender, build_model


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_model(path: Path, model: SequenceRecommender, item_ids: np.ndarray, **metadata: Any) -> None:
    atomic_torch_save(
        {
            "model_config": dataclasses.asdict(model.config),
            "arrays": {k: v.detach().cpu() for k, v in model.arrays().items()},
            "item_ids": torch.as_tensor(item_ids),
            # Side features are a buffer outside arrays(); the model file keeps them so it stands alone.
            **({"feature_index": model.feature_index.detach().cpu()} if model.has_features else {}),
            "metadata": metadata,
        },
        path,
    )


def read_torch_file(path: Path, what: str, todo: str) -> dict:
    """torch.load of a dict we wrote, or a DataError naming the file when it is truncated, corrupt or
    not ours (torch raises RuntimeError, EOFError or UnpicklingError for those)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = brief(exc) or type(exc).__name__  # torch's EOFError on an empty file has no text
        raise DataError(f"{path}: not a readable {what}, truncated or corrupt ({reason}); {todo}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc}); {todo}") from exc
    if not isinstance(blob, dict):
        raise DataError(f"{path}: not a {what} (holds a {type(blob).__name__}); {todo}")
    return blob


def load_model(path: Path) -> tuple[SequenceRecommender, np.ndarray, dict]:
    """(model in eval mode, item_ids mapping index -> original ID, metadata)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no model file; train or export one first")
    todo = "point to the model.pt of a finished run, or train it again"
    blob = read_torch_file(path, "model file", todo)
    missing = [key for key in ("model_config", "arrays", "item_ids") if key not in blob]
    if missing:
        raise DataError(f"{path}: not a fedseqrec model file (no {', '.join(missing)}); {todo}")
    try:
        model = build_model(ModelConfig(**blob["model_config"]))
        model.load_arrays(blob["arrays"])
        if model.has_features:  # side features: a buffer outside arrays(), kept beside them
            model.set_item_features(blob["feature_index"])
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:  # written by another version of the model code
        raise DataError(f"{path}: its weights do not fit this version's model ({exc}); {todo}") from exc
    model.eval()
    return model, blob["item_ids"].numpy(), blob.get("metadata", {})
