"""Sequence augmentation: each operator's definition, the window round trip, and training with it
centrally, on cross-silo and DP clients and on the cohort engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.sequences import build_sequences, training_windows
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError
from common.privacy.ledger import PrivacyLedger
from common.recipes import cohort_training, local_training
from common.training.augmentation import (
    Augmentation,
    augment_windows,
    augmentation_for,
    crop,
    mask_positions,
    reorder,
    substitute,
    window_items,
)
from common.training.cohort_clients import train_chunks
from common.training.federated import local_train
from common.training.step import model_for
from fedseqrec.centralized import train_centralized
from tests.conftest import COHORT

pytestmark = pytest.mark.usefixtures("cache_env")

ITEMS = np.arange(101, 121)  # 20 distinct items, so positions can be traced


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.8, 0.99])
def test_crop_is_a_contiguous_slice_of_the_documented_length(keep):
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = crop(ITEMS, keep, rng)
        assert len(out) == max(2, int(keep * len(ITEMS)))
        start = int(np.flatnonzero(ITEMS == out[0])[0])
        assert np.array_equal(out, ITEMS[start : start + len(out)])  # order kept, nothing skipped


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.9])
def test_reorder_permutes_one_contiguous_run_only(rate):
    rng = np.random.default_rng(1)
    length = max(2, int(rate * len(ITEMS)))
    for _ in range(20):
        out = reorder(ITEMS, rate, rng)
        assert sorted(out) == sorted(ITEMS)
        moved = np.flatnonzero(out != ITEMS)
        if len(moved):  # a shuffle may leave the run as it was
            assert moved[-1] - moved[0] < length
        # a window of `length` items holds every moved item and is a permutation of the original run
        starts = [
            s for s in range(len(ITEMS) - length + 1) if sorted(out[s : s + length]) == sorted(ITEMS[s : s + length])
        ]
        assert any(
            np.array_equal(out[:s], ITEMS[:s]) and np.array_equal(out[s + length :], ITEMS[s + length :])
            for s in starts
        )


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_substitute_replaces_with_catalogue_items(rate):
    rng = np.random.default_rng(2)
    num_items = 7  # every substitute is in 1..7, so each one is visible against items 101..120
    for _ in range(20):
        out = substitute(ITEMS, rate, num_items, rng)
        assert len(out) == len(ITEMS)
        changed = out < 101
        assert changed.sum() == max(1, round(rate * len(ITEMS)))
        assert ((out[changed] >= 1) & (out[changed] <= num_items)).all()
        assert np.array_equal(out[~changed], ITEMS[~changed])


def test_mask_sets_inputs_to_padding_and_keeps_targets():
    inputs, targets, _ = training_windows([ITEMS[:12]], max_len=15, mode="last")  # 12 items, 3 pads
    augmentation = Augmentation(("mask",), num_items=200, prob=1.0, mask_rate=0.3)
    new_inputs, new_targets = augment_windows(inputs, targets, augmentation, np.random.default_rng(3))
    assert np.array_equal(new_targets, targets)  # every next item is still predicted
    masked = (new_inputs == 0) & (inputs > 0)
    assert masked.sum() == int(0.3 * 11)  # of the window's 11 input positions
    assert np.array_equal(new_inputs[~masked], inputs[~masked])
    assert len(mask_positions(2, 0.01, np.random.default_rng(0))) == 1  # at least one


def test_windows_keep_their_shape_and_padding_convention():
    data = build_sequences(synthetic_interactions(30, 40, mean_length=12, seed=4), min_item_count=1)
    inputs, targets, _ = training_windows(data.train_sequences(), max_len=10, mode="all")
    for row in range(len(inputs)):  # the round trip the operators rely on
        items = window_items(inputs[row], targets[row])
        assert np.array_equal(items[1:], targets[row][targets[row] > 0])
    augmentation = Augmentation(("crop", "reorder", "substitute"), num_items=data.num_items, prob=1.0)
    new_inputs, new_targets = augment_windows(inputs, targets, augmentation, np.random.default_rng(5))
    assert new_inputs.shape == inputs.shape and new_targets.shape == targets.shape
    assert (new_targets[new_inputs == 0] == 0).all()  # no target without an input item
    assert ((new_inputs >= 0) & (new_inputs <= data.num_items)).all()
    assert (new_inputs != inputs).any(axis=1).mean() > 0.5  # most windows changed
    for row in range(len(inputs)):  # each augmented window is still one item list, shifted by one
        real = new_inputs[row] > 0
        assert np.array_equal(new_inputs[row][real][1:], new_targets[row][real][:-1])
    untouched = augment_windows(inputs, targets, Augmentation(("crop",), 10, prob=1e-9), np.random.default_rng(0))
    assert np.array_equal(untouched[0], inputs)  # prob ~ 0: nothing changes


def test_augmentation_config_is_off_by_default_and_validated():
    assert augmentation_for(RunConfig().train, 100) is None
    config = RunConfig.from_flat({"augment": "crop, mask", "augment-crop-keep": 0.6})
    assert augmentation_for(config.train, 100) == Augmentation(("crop", "mask"), 100, crop_keep=0.6)
    with pytest.raises(ConfigError, match="'augment'.*shuffle"):
        RunConfig.from_flat({"augment": "crop,shuffle"})
    with pytest.raises(ConfigError, match="augment-mask-rate"):
        RunConfig.from_flat({"augment-mask-rate": 1.5})


TINY = {
    "data": "synthetic",
    "synthetic-users": 60,
    "synthetic-items": 30,
    "model": "sasrec",
    "max-len": 10,
    "emb-dim": 16,
    "num-layers": 1,
    "dropout": 0.0,
    "batch-size": 16,
    "lr": 1e-2,
    "seed": 3,
}
AUGMENT = {"augment": "crop,mask,reorder,substitute", "augment-prob": 0.8}


def test_centralized_training_with_augmentation_runs_end_to_end(tmp_path):
    runs = {}
    for name, extra in (("plain", {}), ("augmented", AUGMENT), ("again", AUGMENT)):
        config = RunConfig.from_flat({**TINY, "epochs": 2, **extra})
        runs[name] = train_centralized(config, tmp_path / name, show_progress=False)
    assert 0 < runs["augmented"]["test"]["ndcg@10"] <= 1
    losses = {
        name: [json.loads(r)["loss"] for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in runs
    }
    assert losses["augmented"] != losses["plain"]  # the batches did change
    assert losses["augmented"] == losses["again"]  # from the training seed: reproducible


def test_cross_silo_and_dp_clients_train_with_augmentation():
    data = build_sequences(synthetic_interactions(40, 30, mean_length=12, seed=2), min_item_count=1)
    base = {**TINY, "local-epochs": 1, "local-lr": 1e-3, "batch-size": 8}
    plain_config = RunConfig.from_flat(base)
    start = model_for(plain_config.model, plain_config.data, data.num_items, seed=plain_config.train.seed).arrays()
    plain = local_train(local_training(plain_config, data.num_items), data, start, server_round=1, client=0)
    augmented = local_train(
        local_training(RunConfig.from_flat({**base, **AUGMENT}), data.num_items), data, start, server_round=1, client=0
    )
    assert augmented.metrics["num-examples"] == plain.metrics["num-examples"]
    assert any(not torch.equal(augmented.arrays[k], plain.arrays[k]) for k in plain.arrays)

    # DP-SGD: what the ledger records (noise, Poisson rate, steps) is the same with augmentation on
    dp = {
        **base,
        "dp-mode": "client",
        "train-windows": "last",
        "noise-multiplier": 1.0,
        "delta": 1e-3,
        "dp-reference-samples": 32,
    }
    dp = {**dp, "reproducible-dp-noise": True}
    ledgers, weights = {}, {}
    for name, extra in (("plain", {}), ("augmented", AUGMENT)):
        ledgers[name] = PrivacyLedger("rdp")
        result = local_train(
            local_training(RunConfig.from_flat({**dp, **extra}), data.num_items),
            data,
            start,
            server_round=1,
            client=0,
            ledger=ledgers[name],
            reproducible_dp_noise=True,
        )
        assert result.arrays is not None and all(torch.isfinite(v).all() for v in result.arrays.values())
        weights[name] = result.arrays
    # same seed-derived noise and batches: only the augmentation can make the weights differ
    assert any(not torch.equal(weights["augmented"][k], weights["plain"][k]) for k in start)
    assert ledgers["augmented"].history == ledgers["plain"].history
    assert ledgers["augmented"].epsilon(1e-3) == ledgers["plain"].epsilon(1e-3)


def test_cohort_engine_augments_each_users_window_reproducibly():
    config = RunConfig.from_flat({**COHORT, **AUGMENT})
    plain_config = RunConfig.from_flat(COHORT)
    data = load_sequence_data(config.data)
    start = model_for(config.model, config.data, data.num_items, seed=config.train.seed).arrays()
    chunks = [(i, np.arange(i * 16, (i + 1) * 16)) for i in range(2)]
    first = train_chunks(cohort_training(config, data.num_items), data, chunks, start, server_round=2)
    second = train_chunks(cohort_training(config, data.num_items), data, chunks, start, server_round=2)
    plain = train_chunks(cohort_training(plain_config, data.num_items), data, chunks, start, server_round=2)
    assert first.metrics["users"] == plain.metrics["users"] == 32
    assert all(torch.equal(first.arrays[k], second.arrays[k]) for k in first.arrays)  # seeded per chunk
    assert any(not torch.equal(first.arrays[k], plain.arrays[k]) for k in first.arrays)
