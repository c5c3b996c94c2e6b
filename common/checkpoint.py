"""Save and load a model with everything needed to use it: config, weights, item mapping."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.models import ModelConfig, SequenceRecommender, build_model


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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


def load_model(path: Path) -> tuple[SequenceRecommender, np.ndarray, dict]:
    """(model in eval mode, item_ids mapping index -> original ID, metadata)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model file; train or export one first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(**blob["model_config"]))
    model.load_arrays(blob["arrays"])
    if model.has_features:
        model.set_item_features(blob["feature_index"])
    model.eval()
    return model, blob["item_ids"].numpy(), blob.get("metadata", {})
