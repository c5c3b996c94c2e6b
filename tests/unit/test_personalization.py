"""Device fine-tuning (personalisation): selection on the held-out item, a real gain on a user whose
habit the global model does not know, and under client DP the federation's DP-SGD path and ledger."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.errors import ConfigError
from common.evaluation.ranking import model_scores, rank_targets
from common.model.checkpoint import load_model, save_model
from common.privacy.dpsgd import dp_windows, plan_round
from common.privacy.ledger import PrivacyLedger
from common.recipes import local_training
from common.training.personalization import DPBudget, FineTuning, fine_tune, validation_loss
from common.training.step import model_for
from fedseqrec.cli import main

NUM_ITEMS = 30
BASE = {
    "data": "synthetic",
    "model": "sasrec",
    "emb-dim": 16,
    "num-layers": 1,
    "max-len": 10,
    "dropout": 0.0,
    "synthetic-items": NUM_ITEMS,
}
HABIT = np.array([4, 17, 9, 23, 12])  # this user's own cycle; nobody else's data holds it


def habit_user(length: int = 40) -> np.ndarray:
    return np.resize(HABIT, length).astype(np.int64)


@pytest.fixture(scope="module")
def global_model():
    """A global model trained on random users: it knows popularity, not the habit."""
    config = RunConfig.from_flat(BASE)
    model = model_for(config.model, config.data, NUM_ITEMS, seed=config.train.seed)
    rng = np.random.default_rng(0)
    inputs = torch.as_tensor(rng.integers(1, NUM_ITEMS + 1, size=(64, 10)))
    targets = torch.as_tensor(rng.integers(1, NUM_ITEMS + 1, size=(64, 10)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten() - 1).backward()
        optimizer.step()
    return config, model.eval()


def _rank(model, history, target) -> int:
    return int(rank_targets(model_scores(model), [history], np.array([target]), num_items=NUM_ITEMS)[0][0])


def test_fine_tuning_learns_the_devices_own_habit(global_model):
    config, model = global_model
    seq = habit_user()
    before = {k: v.clone() for k, v in model.arrays().items()}
    tuned, report = fine_tune(
        model, seq[:-2], int(seq[-2]), local_training(config, model.config.num_items), FineTuning(steps=30, lr=1e-2)
    )
    assert _rank(model, seq[:-1], int(seq[-1])) > 3  # the global model has no idea
    assert _rank(tuned, seq[:-1], int(seq[-1])) == 0  # the device's model does
    assert report["best_step"] > 0 and not report["dp"]
    for key, value in model.arrays().items():
        assert torch.equal(value, before[key]), key  # the global model is never touched


def test_the_kept_step_has_the_lowest_held_out_loss_and_step_0_is_the_global_model(global_model):
    config, model = global_model
    rng = np.random.default_rng(3)
    for lr in (1e-2, 10.0):  # a huge rate only makes things worse: selection keeps the global model
        seq = rng.integers(1, NUM_ITEMS + 1, size=25)
        tuned, report = fine_tune(
            model, seq[:-1], int(seq[-1]), local_training(config, model.config.num_items), FineTuning(steps=5, lr=lr)
        )
        losses = report["validation_loss"]
        assert len(losses) == 6 and report["best_step"] == int(np.argmin(losses))
        assert validation_loss(tuned, seq[:-1], int(seq[-1])) == pytest.approx(min(losses), abs=1e-5)
        if report["best_step"] == 0:
            for key, value in model.arrays().items():
                assert torch.equal(tuned.arrays()[key], value), key
    assert report["best_step"] == 0  # lr 10


def test_client_dp_fine_tuning_goes_through_dp_sgd_and_the_ledger(global_model):
    config, model = global_model
    dp_config = config.replace(**{"dp-mode": "client"})
    seq = habit_user(60)
    with pytest.raises(ConfigError, match="ledger"):
        fine_tune(model, seq[:-1], int(seq[-1]), local_training(dp_config, model.config.num_items), FineTuning(steps=3))
    ledger = PrivacyLedger("rdp")
    _, report = fine_tune(
        model,
        seq[:-1],
        int(seq[-1]),
        local_training(dp_config, model.config.num_items),
        FineTuning(steps=3, lr=1e-2),
        DPBudget(ledger, 1e-3, 1.3),
    )
    # Oracle: the plan of the federation's DP path for these windows, 3 epochs, z = 1.3.
    dataset, unit = dp_windows([seq[:-1]], dp_config.data.max_len, dp_config.data.train_windows)
    plan = plan_round(
        dataclasses.replace(dp_config.privacy, noise_multiplier=1.3),
        batch_size=dp_config.train.batch_size,
        local_epochs=3,
        reference_samples=len(dataset),
        unit=unit,
        expected_rounds=1.0,
    )
    assert ledger.history == [(1.3, plan.sample_rate, plan.steps)] and report["dp_steps"] == plan.steps
    assert report["epsilon_before"] == 0 and report["epsilon_after"] == pytest.approx(ledger.epsilon(1e-3))
    assert report["epsilon_after"] > 0 and report["unit_of_privacy"] == unit
    # Over the device's cap: refused before any step, the ledger unchanged.
    with pytest.raises(ConfigError, match="over its cap"):
        fine_tune(
            model,
            seq[:-1],
            int(seq[-1]),
            local_training(dp_config, model.config.num_items),
            FineTuning(steps=3),
            DPBudget(ledger, 1e-3, 1.3, max_epsilon=report["epsilon_after"] * 1.01),
        )
    assert ledger.history == [(1.3, plan.sample_rate, plan.steps)]


def _run_dir(tmp_path, config: RunConfig, model, name="run"):
    item_ids = np.concatenate([[-1], 300 + np.arange(NUM_ITEMS)])
    save_model(tmp_path / name / "model.pt", model, item_ids, run_config=config.to_flat(), best_round=7)
    history = tmp_path / "me.csv"
    history.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"5,{300 + i - 1},{t}\n" for t, i in enumerate(habit_user()))
    )
    return tmp_path / name, history


def test_cli_personalize_writes_a_model_that_exports(global_model, tmp_path, capsys):
    config, model = global_model
    run, history = _run_dir(tmp_path, config, model)
    out = tmp_path / "mine"
    argv = ["personalize", str(run), "--history", str(history), "--out", str(out), "--steps", "30", "--lr", "0.01"]
    assert main(argv) == 0
    assert "kept step" in capsys.readouterr().err
    tuned, _, metadata = load_model(out / "model.pt")
    report = json.loads((out / "personalization.json").read_text())
    assert metadata["personalized"] == report and metadata["best_round"] == 7 and report["sent_anywhere"] is False
    seq = habit_user()
    assert _rank(tuned, seq[:-1], int(seq[-1])) == 0
    counts = np.ones(NUM_ITEMS + 1, dtype=np.int64)
    from common.model.export import export_run

    export_run(out, tmp_path / "device", item_counts=counts)  # the personalised model goes on the device as any other


def test_cli_personalize_of_a_client_dp_run_records_the_devices_ledger(global_model, tmp_path, capsys):
    config, model = global_model
    dp_config = config.replace(**{"dp-mode": "client", "delta": 1e-3})
    run, history = _run_dir(tmp_path, dp_config, model)
    argv = ["personalize", str(run), "--history", str(history), "--out", str(tmp_path / "mine"), "--steps", "2"]
    assert main(argv) == 2
    assert "--state-dir" in capsys.readouterr().err
    state = tmp_path / "state"
    assert main([*argv, "--state-dir", str(state)]) == 0
    assert "in the ledger" in capsys.readouterr().err
    ledger = PrivacyLedger.load(state / "privacy_ledger.json", "rdp")
    assert ledger.history and ledger.history[0][0] == dp_config.privacy.noise_multiplier
    report = json.loads((tmp_path / "mine" / "personalization.json").read_text())
    assert report["epsilon_after"] == pytest.approx(ledger.epsilon(1e-3))
