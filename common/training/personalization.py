"""Personalisation on the device: fine-tune the global model on the device's own history.

A device holds one user's history. It splits off its latest item as its own validation item,
fine-tunes a copy of the global model on the rest for at most `steps` full-batch steps (every
window of its history in each step) and keeps the step, 0 included (= the global model), whose
validation loss is lowest: early stopping with the one held-out item it has. The result is a model
for this device alone; nothing here sends anything anywhere.

Under client DP (`dp-mode = client` in the run's config) the fine-tuning takes the federation's own
DP-SGD path (`common.privacy.dpsgd`: the same windows, Opacus per-sample clipping, Poisson sampling,
noise from the OS's entropy) and the device's privacy ledger records it, so that every epsilon the
device reports afterwards includes it. Selection is then between the global model and the model
after all planned DP epochs (DP-SGD runs its plan as one unit). Against the server this spend is
conservative: the personalised model never leaves the device, so the server learns nothing from
it, unless the device sends it (or anything computed from it) back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from common.data.sequences import left_pad
from common.errors import ConfigError, DataError
from common.model.losses import next_item_loss
from common.model.models import SequenceRecommender, build_model
from common.privacy.dpsgd import dp_windows, plan_round, train_private
from common.privacy.ledger import PrivacyLedger
from common.privacy.randomness import dp_seed
from common.training.federated import LocalTraining, effective_max_epsilon
from common.training.optimizers import plain_optimizer
from common.training.step import window_dataset


@dataclass(frozen=True)
class FineTuning:
    steps: int = 20  # most full-batch steps (non-DP) or DP-SGD epochs (client DP)
    lr: float = 1e-3  # Adam
    seed: int = 0  # dropout draws (non-DP); DP noise never comes from it

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class DPBudget:
    """What the device's DP fine-tuning may spend, and where it records it."""

    ledger: PrivacyLedger
    delta: float
    noise_multiplier: float
    max_epsilon: float = 0.0  # 0 = no cap beyond the run's max-epsilon


@torch.no_grad()
def validation_loss(model: SequenceRecommender, history: np.ndarray, item: int) -> float:
    """-log p(item | history) over the whole catalogue (the training loss on the held-out item)."""
    model.eval()
    inputs = torch.as_tensor(left_pad([history], model.config.max_len))  # (1, L)
    logits = model.score(model.encode(inputs)[:, -1])  # (1, N)
    return float(F.cross_entropy(logits, torch.as_tensor([item - 1])))


def fine_tune(
    model: SequenceRecommender,
    train: np.ndarray,
    validation_item: int,
    training: LocalTraining,
    settings: FineTuning = FineTuning(),
    dp: DPBudget | None = None,
) -> tuple[SequenceRecommender, dict]:
    """A fine-tuned copy of `model` (the global model is left untouched) and a report.

    `training`: the federation's local training values (`common.recipes.local_training`): its
    max-len, and under client DP its DP-SGD settings, batch size and augmentation.
    `train`: the user's history without its validation item (model indices, oldest first);
    `validation_item`: the item that followed `train`, used only to choose the step."""
    settings.validate()
    train = np.asarray(train, dtype=np.int64)
    if len(train) < 2:
        raise DataError(f"fine-tuning needs >= 2 history items before the validation item, got {len(train)}")
    model = copy.deepcopy(model)
    before = validation_loss(model, train, validation_item)
    if training.privacy.dp_mode == "client":
        if dp is None:
            raise ConfigError("the run used dp-mode = client: DP fine-tuning needs the device's privacy ledger")
        return _fine_tune_private(model, train, validation_item, training, settings, dp, before)
    torch.manual_seed(settings.seed)
    dataset = window_dataset([train], training.data.max_len, "all")
    inputs, targets = dataset.tensors  # every window of the history, one full batch per step
    optimizer = plain_optimizer("adam", model.parameters(), lr=settings.lr)  # on the device: no torch.optim
    best = (before, 0, copy.deepcopy(model.state_dict()))
    losses = [before]
    for step in range(1, settings.steps + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        next_item_loss(model, inputs, targets, loss="ce").backward()
        optimizer.step()
        with torch.no_grad():
            model.item_emb.weight[0].zero_()
        losses.append(validation_loss(model, train, validation_item))
        if losses[-1] < best[0]:
            best = (losses[-1], step, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return model, {"dp": False, "best_step": best[1], "validation_loss": losses, "windows": len(inputs)}


def _fine_tune_private(model, train, validation_item, training: LocalTraining, settings, dp: DPBudget, before: float):
    """The federation's DP-SGD path, recorded in the device's ledger before anything is returned."""
    # fixed noise (no target): this is not a federated round
    privacy = replace(training.privacy, noise_multiplier=dp.noise_multiplier, target_epsilon=0.0)
    dataset, unit = dp_windows([train], training.data.max_len, training.data.train_windows)
    plan = plan_round(
        privacy,
        batch_size=training.batch_size,
        local_epochs=settings.steps,
        reference_samples=len(dataset),
        unit=unit,
        expected_rounds=1.0,
    )
    cap = effective_max_epsilon(training.privacy.max_epsilon, dp.max_epsilon)
    after = dp.ledger.projected(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps)
    if cap > 0 and after.epsilon(dp.delta) > cap:
        raise ConfigError(
            f"DP fine-tuning would take this device's epsilon from {dp.ledger.epsilon(dp.delta):.3g} to "
            f"{after.epsilon(dp.delta):.3g}, over its cap {cap:g} (delta {dp.delta:g}); "
            "use fewer --steps or a larger --noise-multiplier"
        )
    spent_before = dp.ledger.epsilon(dp.delta)
    global_state = copy.deepcopy(model.state_dict())
    model.train()  # Opacus wraps training-mode modules only
    _, steps = train_private(
        model,
        dataset,
        plan,
        privacy,
        lr=settings.lr,
        epochs=settings.steps,
        augmentation=training.augmentation,
        noise_seed=dp_seed(reproducible=False, derived=0),
        train_seed=training.seed,
        ledger=dp.ledger,
    )
    trained = model.arrays()
    model = build_model(model.config)  # a clean module: Opacus leaves its hooks on the one it trained
    model.load_arrays(trained)
    model.eval()
    after_loss = validation_loss(model, train, validation_item)
    kept = after_loss < before
    if not kept:
        model.load_state_dict(global_state)
    report = {
        "dp": True,
        "best_step": steps if kept else 0,
        "validation_loss": [before, after_loss],
        "windows": len(dataset),
        "unit_of_privacy": unit,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "dp_steps": steps,
        "epsilon_before": spent_before,
        "epsilon_after": dp.ledger.epsilon(dp.delta),
        "delta": dp.delta,
        "accountant": dp.ledger.accountant,
    }
    return model, report
