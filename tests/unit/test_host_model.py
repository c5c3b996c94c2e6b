"""A cohort host reuses one model across rounds; what it computes stays what a fresh model computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import common.training.cohort_clients
from common.config import RunConfig
from common.data.load import load_sequence_data
from common.recipes import cohort_training
from common.training.cohort_clients import train_chunks
from common.training.step import host_model, model_for
from tests.conftest import COHORT

pytestmark = pytest.mark.usefixtures("cache_env")


def test_rounds_on_a_reused_model_equal_rounds_on_fresh_models(monkeypatch):
    config = RunConfig.from_flat({**COHORT, "dropout": 0.2})
    data = load_sequence_data(config.data)
    assert host_model(config.model, config.data, data.num_items, seed=config.train.seed) is host_model(
        config.model, config.data, data.num_items, seed=config.train.seed
    )
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, emb_dim=8))
    assert host_model(other.model, other.data, data.num_items, seed=other.train.seed) is not host_model(
        config.model, config.data, data.num_items, seed=config.train.seed
    )
    chunks = [(0, np.arange(0, 16)), (1, np.arange(16, 32))]
    starts = [
        model_for(config.model, config.data, data.num_items, seed=s).arrays() for s in (1, 2, 1)
    ]  # round 3 = round 1's weights
    reused = [
        train_chunks(cohort_training(config, data.num_items), data, chunks, start, server_round=r)
        for r, start in enumerate(starts)
    ]
    monkeypatch.setattr(
        common.training.cohort_clients, "host_model", lambda m, d, n, seed, item_ids=None: model_for(m, d, n, seed=seed)
    )
    fresh = [
        train_chunks(cohort_training(config, data.num_items), data, chunks, start, server_round=r)
        for r, start in enumerate(starts)
    ]
    for a, b in zip(reused, fresh):
        assert a.metrics == b.metrics
        for key, value in b.arrays.items():
            assert torch.equal(a.arrays[key], value), key
