"""Simulated dropouts and attackers (client/fault_injection.py), and a run that survives them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.fault_injection import attackers, dropped, fake_users, poisoned
from common.config import RunConfig
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError
from common.evaluation import item_exposure, model_scores, popularity_scores
from common.federated import local_train
from tests.conftest import SIM_CONFIG, _run

pytestmark = pytest.mark.usefixtures("cache_env")


def test_attackers_are_a_fixed_share_and_dropouts_a_per_round_draw():
    assert len(attackers(3, 50, 0.2)) == 10 and attackers(3, 50, 0.2) == attackers(3, 50, 0.2)
    assert len(attackers(3, 10, 0.01)) == 1 and attackers(3, 10, 0.0) == set()
    draws = [dropped(0, r, c, 0.3) for r in range(1, 41) for c in range(50)]
    assert np.mean(draws) == pytest.approx(0.3, abs=0.03)
    assert dropped(0, 5, 7, 0.3) == dropped(0, 5, 7, 0.3)


def test_poisoned_updates_against_their_definitions():
    update = {"w": np.array([1.0, -2.0, 2.0], dtype=np.float32)}
    assert np.allclose(poisoned("sign-flip", update, 3.0, None)["w"], [-3, 6, -6])
    assert np.allclose(poisoned("scale", update, 3.0, None)["w"], [3, -6, 6])
    big = {"w": np.ones(100_000, dtype=np.float32)}
    noise = poisoned("random", big, 2.0, np.random.default_rng(0))["w"]
    assert np.linalg.norm(noise) == pytest.approx(2.0 * np.linalg.norm(big["w"]), rel=0.02)
    with pytest.raises(ConfigError, match="sim-target-item"):
        RunConfig.from_flat({"sim-attack": "promote"})
    with pytest.raises(ConfigError, match="cohort engine"):
        RunConfig.from_flat(
            {"partition": "user", "train-windows": "last", "cohort-engine": True, "sim-attack": "scale"}
        )


def test_training_on_fake_users_pushes_the_target_into_top_k():
    from common.data.sequences import build_sequences

    config = RunConfig.from_flat(
        {
            "data": "synthetic",
            "synthetic-users": 120,
            "synthetic-items": 60,
            "model": "gru",
            "emb-dim": 16,
            "hidden-dim": 16,
            "num-layers": 1,
            "max-len": 12,
            "local-epochs": 3,
            "local-lr": 0.01,
            "local-optimizer": "adam",
            "batch-size": 16,
        }
    )
    frame = synthetic_interactions(120, 60, seed=1)
    data = build_sequences(frame, min_item_count=1, min_user_count=3)
    target = int(np.argmin(np.bincount(data.items, minlength=data.num_items + 1)[1:])) + 1  # a cold item
    fake = fake_users(data, target, seed=0)
    assert all((fake.sequence(u)[1::2] == target).all() for u in range(fake.num_users))
    from common.training import model_for

    model = model_for(config, data.num_items)
    before = item_exposure(model_scores(model.eval()), data, target, max_len=12)
    result = local_train(config, fake, model.arrays(), server_round=1, client=0)
    model.load_arrays(result.arrays)
    after = item_exposure(model_scores(model.eval()), data, target, max_len=12)
    assert before < 0.5 < after
    counts = np.bincount(data.items, minlength=data.num_items + 1).astype(np.float64)
    top = int(np.argmax(counts[1:])) + 1
    seen = np.mean([top in data.sequence(u)[:-1] for u in range(data.num_users)])
    assert item_exposure(popularity_scores(counts), data, top, max_len=12) == pytest.approx(1 - seen)


def test_a_run_with_dropouts_and_attackers_keeps_a_finite_model(cache, tmp_path):
    out = tmp_path / "faults"
    _run(
        {
            **SIM_CONFIG,
            "sim-dropout": 0.3,
            "sim-attack": "random",
            "sim-attackers": 0.2,
            "sim-attack-scale": 1e4,
            "max-update-norm": 50.0,
            "out-dir": str(out),
        },
        cache,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(r["failed"] for r in rows) > 0 and summary["invalid_replies"] > 0  # dropped out; attacks refused
    assert np.isfinite(summary["test"]["ndcg@10"]) and summary["test"]["ndcg@10"] > 0
