"""What one federated client does with its local users, independent of Flower's messages.

`local_train` starts from the global weights, runs local epochs on the client's training
windows and returns new weights plus numeric metrics (evaluation: `common.training.cohort_clients.
evaluate_users`). Only weights and numbers leave these functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from common.config import DataSettings, ModelSettings, PrivacySettings
from common.data.sequences import SequenceData
from common.errors import DataError
from common.node_config import node_setting
from common.privacy.ledger import PrivacyLedger
from common.privacy.randomness import dp_seed
from common.training.augmentation import Augmentation, maybe_augmented
from common.training.optimizers import plain_optimizer
from common.training.step import StepOptions, model_for, train_epoch, window_dataset, window_loader


def client_seed(seed: int, server_round: int, client: int) -> int:
    """A seed that depends only on (run seed, round, client): results do not depend on which
    worker process or in what order clients run, so resumed runs replay exactly."""
    digest = hashlib.sha256(f"{seed}:{server_round}:{client}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class LocalResult:
    arrays: dict[str, torch.Tensor] | None  # None: the client declined (privacy budget, owner's choice)
    metrics: dict[str, float | int]


@dataclass(frozen=True)
class LocalTraining:
    """A client's local training values (from the run config at the edge: `common.recipes.local_training`)."""

    model: ModelSettings
    data: DataSettings  # max-len, training windows, the item features the model is built with
    privacy: PrivacySettings  # dp-mode = client: DP-SGD's noise, clip, accountant, delta and cap
    seed: int
    epochs: int
    optimizer: str  # "adam" or "sgd"
    lr: float
    weight_decay: float
    batch_size: int
    augmentation: Augmentation | None = None


@dataclass(frozen=True)
class DeviceLimits:
    """Settings the device owner controls (node config); the server cannot override them."""

    max_epsilon: float = 0.0  # 0 = the run's max-epsilon only
    train: bool = True
    max_train_seconds: float = 0.0  # 0 = no limit

    @classmethod
    def from_node_config(cls, node_config: dict) -> DeviceLimits:
        return cls(
            node_setting(node_config, "max-epsilon", 0.0),
            node_setting(node_config, "train", True),
            node_setting(node_config, "max-train-seconds", 0.0),
        )


def effective_max_epsilon(run_max: float, device_max: float) -> float:
    caps = [c for c in (run_max, device_max) if c > 0]
    return min(caps) if caps else 0.0


def check_local_data(local: SequenceData, where: str) -> None:
    if local.num_users == 0:
        raise DataError(f"{where}: no users in this client's data; check its partition or data file")
    if (local.lengths() < 3).all():
        raise DataError(f"{where}: every user has fewer than 3 interactions; leave-one-out needs >= 3")


def local_train(
    training: LocalTraining,
    local: SequenceData,
    global_arrays: dict[str, torch.Tensor],
    *,
    server_round: int,
    client: int,
    proximal_mu: float = 0.0,
    ledger: PrivacyLedger | None = None,
    limits: DeviceLimits = DeviceLimits(),
    expected_rounds: float = 1.0,
    reproducible_dp_noise: bool = False,
    reference_samples: int = 0,
) -> LocalResult:
    """`reproducible_dp_noise`: DP noise and sampling from the run seed (simulation only); by
    default they come from OS entropy, secret from the server that knows the seed.
    `reference_samples`: client DP plans with this public size, never the client's own count."""
    if not limits.train:
        return LocalResult(None, {"declined": 1, "num-examples": 0})
    seed = client_seed(training.seed, server_round, client)
    torch.manual_seed(seed)
    model = model_for(training.model, training.data, local.num_items, seed=training.seed, item_ids=local.item_ids)
    model.load_arrays(global_arrays)
    if training.privacy.dp_mode == "client":
        noise_seed = dp_seed(reproducible=reproducible_dp_noise, derived=seed)
        ledger = ledger or PrivacyLedger(training.privacy.accountant)
        return _private_local_train(
            training, local, model, seed, noise_seed, ledger, limits, expected_rounds, reproducible_dp_noise,
            reference_samples,
        )  # fmt: skip
    dataset = window_dataset(local.train_sequences(), training.data.max_len, training.data.train_windows)
    if len(dataset) == 0:
        raise DataError(f"client {client}: no training windows (histories too short)")
    optimizer = plain_optimizer(
        training.optimizer, model.parameters(), lr=training.lr, weight_decay=training.weight_decay
    )
    options = StepOptions(
        loss=training.model.loss,
        num_negatives=training.model.num_negatives,
        reduction=training.model.loss_reduction,
        proximal_mu=proximal_mu,
    )
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    losses = []
    for epoch in range(training.epochs):
        loader = window_loader(dataset, training.batch_size, seed + epoch)
        batches = maybe_augmented(loader, training.augmentation, [seed, epoch])
        loss, _ = train_epoch(model, batches, optimizer, options, global_params=global_params)
        losses.append(loss)
    return LocalResult(
        model.arrays(), {"train-loss": float(np.mean(losses)), "num-examples": len(dataset), "unit-weight": 1}
    )


def _private_local_train(
    training: LocalTraining,
    local: SequenceData,
    model,
    train_seed: int,
    noise_seed: int,
    ledger: PrivacyLedger,
    limits: DeviceLimits,
    expected_rounds: float,
    reproducible: bool,
    reference_samples: int,
) -> LocalResult:
    """DP-SGD on the client's windows. The reply carries nothing that depends on its data but the
    noised weights (`common.privacy.releases.reply_fields`): equal weight, no loss, the plan public."""
    # Opacus only where DP-SGD runs: a device without it starts a second faster
    from common.privacy.dpsgd import dp_windows, plan_round, train_private

    privacy = training.privacy
    delta = privacy.delta
    dataset, unit = dp_windows(local.train_sequences(), training.data.max_len, training.data.train_windows)
    if len(dataset) == 0:
        raise DataError("no training windows (histories too short)")
    reference = privacy.dp_reference_samples or reference_samples
    if reference <= 0:
        raise DataError(
            "client DP needs the public size its plan assumes: set dp-reference-samples (the server sends "
            "users per client when it knows the population)"
        )
    plan = plan_round(
        privacy,
        batch_size=training.batch_size,
        local_epochs=training.epochs,
        reference_samples=reference,
        unit=unit,
        expected_rounds=expected_rounds,
    )
    spent = ledger.epsilon(delta)
    cap = effective_max_epsilon(privacy.cap, limits.max_epsilon)
    after = ledger.projected(
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
    ).epsilon(delta)
    if cap > 0 and after > cap:
        return LocalResult(None, {"declined": 1, "epsilon": spent, "num-examples": 0})
    train_private(
        model,
        dataset,
        plan,
        privacy,
        lr=training.lr,
        epochs=training.epochs,
        augmentation=training.augmentation,
        noise_seed=noise_seed,
        train_seed=train_seed,
        ledger=ledger,
        max_seconds=limits.max_train_seconds,
    )
    return LocalResult(
        model.arrays(),
        {
            "num-examples": 1,  # every device weighs the same: its count would be a release
            "unit-weight": 1,
            "epsilon": ledger.epsilon(delta),
            "user-level": int(unit == "user"),
            "dp-noise-reproducible": int(reproducible),
        },
    )
