"""Item side features: metadata parsing, alignment with item indices, the featured models (exact DP
per-sample gradients, training, federation, checkpoint and ONNX export)."""

from __future__ import annotations

import pytest
import torch

from common.config import RunConfig
from common.data.synthetic import synthetic_interactions
from common.model.checkpoint import load_model
from common.privacy import grad_samplers  # noqa: F401  (the models' Opacus per-sample-gradient rules)
from common.training.step import model_for
from tests.conftest import SIM_CONFIG, _run

pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Synthetic interactions with a `category` column (4 categories by item ID), as a CSV file."""
    root = tmp_path_factory.mktemp("featured")
    frame = synthetic_interactions(120, 40, seed=1)
    frame["category"] = ["c" + str(item % 4) for item in frame["item_id"]]
    path = root / "interactions.csv"
    frame.to_csv(path, index=False)
    return path


def test_cross_silo_federation_with_item_features(catalogue, cache, tmp_path):
    """The real ServerApp and ClientApps: every party builds the table, only weights travel."""
    out = tmp_path / "run"
    flat = {**SIM_CONFIG, "data": str(catalogue), "item-features": "category", "max-len": 12, "out-dir": str(out)}
    _run(flat, cache)
    model, item_ids, _ = load_model(out / "model.pt")
    config = RunConfig.from_flat({k: v for k, v in flat.items() if k != "out-dir"})
    fresh = model_for(config.model, config.data, len(item_ids) - 1, seed=config.train.seed, item_ids=item_ids)
    assert torch.equal(model.feature_index, fresh.feature_index)
    assert (model.feature_emb.weight - fresh.feature_emb.weight).abs().max() > 1e-3
