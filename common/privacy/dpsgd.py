"""Client-side DP-SGD with Opacus: per-sample clipping, Gaussian noise, Poisson sampling.

One DP sample is one training window. When every user contributes one window (cross-silo with
`train-windows = last`) that is one user, so the guarantee is user-level for this client's
updates; otherwise windows are cut disjoint (each interaction in exactly one sample) and the
guarantee is event-level (one interaction).

The plan (sample rate, steps, the divisor of the noisy gradient sum, the noise multiplier) comes
from public numbers only: `dp-reference-samples`, the size every client is planned as if it held,
never its true count. Under add/remove adjacency one window more or less must not change anything
but the noised weights, so a plan read off the client's own count (Opacus' default: rate 1 / its
batches, divisor its expected batch) would itself release that count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch.utils.data import TensorDataset

from common.config import PrivacySettings
from common.data.sequences import training_windows
from common.privacy import grad_samplers  # noqa: F401  (the models' per-sample-gradient rules)
from common.privacy.accountants import PoissonGaussian, calibrate, create_accountant
from common.privacy.ledger import PrivacyLedger
from common.privacy.mechanism import dpsgd_unit
from common.training.augmentation import Augmentation, maybe_augmented
from common.training.step import StepOptions, train_epoch


@dataclass(frozen=True)
class DPPlan:
    noise_multiplier: float
    sample_rate: float  # Poisson rate: 1 / batches per epoch of the reference size
    steps: int  # optimiser steps this round
    unit: str  # "user" or "event"
    expected_batch: float = 1.0  # the divisor of each step's noisy sum: reference samples x rate


def dp_windows(sequences: list[np.ndarray], max_len: int, train_windows: str) -> tuple[TensorDataset, str]:
    """DP samples (disjoint windows) of training sequences, and the unit of privacy they give."""
    inputs, targets, owners = training_windows(sequences, max_len, train_windows, disjoint=True)
    return TensorDataset(torch.as_tensor(inputs), torch.as_tensor(targets)), dpsgd_unit(
        len(np.unique(owners)) == len(owners)
    )


def plan_round(
    privacy: PrivacySettings,
    *,
    batch_size: int,
    local_epochs: int,
    reference_samples: int,
    unit: str,
    expected_rounds: float,
) -> DPPlan:
    """Noise, rate and steps for one round, from public numbers only (`reference_samples`: the size
    the plan assumes, not the client's). With a target epsilon, the noise is the smallest that keeps
    epsilon within target over `expected_rounds` participations."""
    # k Poisson batches per epoch at rate exactly 1 / k, as Opacus' sampler runs them (its length is
    # set to k below, so float rounding of 1 / (1 / k) cannot drop a step the ledger books).
    batches_per_epoch = max(1, round(reference_samples / batch_size))
    sample_rate = 1.0 / batches_per_epoch
    steps = local_epochs * batches_per_epoch
    noise = privacy.noise_multiplier
    if privacy.target_epsilon > 0:
        total = int(steps * max(1.0, expected_rounds))
        noise = calibrate(
            lambda: create_accountant(f"opacus-{privacy.accountant}"),
            lambda z: [(PoissonGaussian(z, sample_rate), total)],
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
        )
    return DPPlan(float(noise), sample_rate, steps, unit, expected_batch=reference_samples * sample_rate)


class _TimeBudget:
    """Stops local training after the device owner's time limit (steps taken are still accounted)."""

    def __init__(self, batches, seconds: float):
        self.batches, self.deadline = batches, time.monotonic() + seconds if seconds > 0 else None
        self.steps = 0

    def __iter__(self):
        for batch in self.batches:
            if self.deadline is not None and time.monotonic() > self.deadline:
                return
            self.steps += 1
            yield batch


def train_private(
    model: torch.nn.Module,
    dataset: TensorDataset,
    plan: DPPlan,
    privacy: PrivacySettings,
    *,
    lr: float,
    epochs: int,
    augmentation: Augmentation | None,
    noise_seed: int,
    train_seed: int,
    ledger: PrivacyLedger,
    max_seconds: float = 0.0,
) -> tuple[float, int]:
    """Run the planned DP-SGD steps, record them in the ledger; returns (mean loss, steps taken).

    `noise_seed` seeds both the Gaussian noise and the Poisson sampling: it must be secret from the
    server (`common.privacy.randomness.dp_seed`). Never None outside secure mode: Opacus would then
    draw from torch's global RNG, which training seeds from the run seed. `train_seed` seeds what
    is not part of the guarantee (sequence augmentation), never from the noise seed."""
    generator = None if privacy.secure_mode else torch.Generator().manual_seed(noise_seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DPDataLoader(dataset, sample_rate=plan.sample_rate, generator=generator)
    loader.batch_sampler.steps = round(1 / plan.sample_rate)  # the plan's k batches per epoch, exactly
    if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:  # the ledger must record Opacus' real rate
        raise RuntimeError(f"DP plan rate {plan.sample_rate} != Opacus rate {1.0 / len(loader)}")
    engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=privacy.secure_mode)
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=False,  # the loader above already samples at the plan's rate
        grad_sample_mode=privacy.opacus_mode,
        noise_generator=generator,
    )
    # Opacus divides by the client's own expected batch (its count x rate): a public divisor instead
    private_optimizer.expected_batch_size = plan.expected_batch
    options = StepOptions(loss="ce", per_sample_grads=True)
    # Augmentation acts on each Poisson-sampled example alone (common/training/augmentation.py): every example
    # still yields one clipped gradient, so the sample rate, steps and noise accounted are unchanged.
    losses, steps = [], 0
    started = time.monotonic()
    for epoch in range(epochs):
        remaining = max_seconds - (time.monotonic() - started) if max_seconds > 0 else 0.0
        if max_seconds > 0 and remaining <= 0:
            break
        batches = _TimeBudget(maybe_augmented(private_loader, augmentation, [train_seed, epoch]), remaining)
        loss, _ = train_epoch(private_model, batches, private_optimizer, options)
        steps += batches.steps
        if not np.isnan(loss):
            losses.append(loss)
    ledger.record(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=steps)
    return (float(np.mean(losses)) if losses else float("nan")), steps
