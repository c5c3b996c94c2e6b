"""The training step shared by the centralized baseline, federated clients and DP clients."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from common.config import DataSettings, ModelSettings
from common.data.load import load_item_features
from common.data.sequences import training_windows
from common.model.losses import next_item_loss
from common.model.models import ModelConfig, SequenceRecommender, build_model
from common.training.allocator import release_freed_memory, retain_freed_memory


def lr_factor(epoch: int, epochs: int, schedule: str, warmup: int) -> float:
    """The share of the base learning rate for `epoch` (1-based) of `epochs`: a linear warm-up over
    the first `warmup` epochs (1/w, 2/w, ..., 1), then 1 (constant) or a cosine from 1 down towards 0
    over the remaining epochs (the last epoch still trains: its factor is above 0)."""
    if epoch <= warmup:
        return epoch / warmup
    if schedule == "constant":
        return 1.0
    progress = (epoch - warmup - 1) / (epochs - warmup)  # 0 at the first epoch after warm-up, < 1 at the last
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config(
    settings: ModelSettings, num_items: int, max_len: int, num_features: int = 0, feature_slots: int = 0
) -> ModelConfig:
    return ModelConfig(
        arch=settings.model,
        num_items=num_items,
        max_len=max_len,
        emb_dim=settings.emb_dim,
        item_rank=settings.item_rank,
        hidden_dim=settings.hidden_dim,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        dropout=settings.dropout,
        positions=settings.positions,
        block=settings.sasrec_block,
        num_features=num_features,
        feature_slots=feature_slots,
    )


def model_for(
    model: ModelSettings, data: DataSettings, num_items: int, *, seed: int, item_ids: np.ndarray | None = None
) -> SequenceRecommender:
    """A freshly initialised model; the same seed gives the same weights everywhere.

    With `item-features`, `item_ids` (the catalogue: index -> original ID) places each item's
    features on its index; every party derives the same table from the same public metadata."""
    features = None
    if data.item_features:
        if item_ids is None or len(item_ids) != num_items + 1:
            raise ValueError("item-features needs the catalogue's item_ids (num_items + 1 entries) to build the model")
        features = load_item_features(data, item_ids)
    torch.manual_seed(seed)
    shape = (features.num_features, features.slots) if features is not None else (0, 0)
    built = build_model(model_config(model, num_items, data.max_len, *shape))
    if features is not None:
        built.set_item_features(torch.as_tensor(features.index))
    return built


_HOST_MODELS: dict[tuple, SequenceRecommender] = {}


def host_model(
    model: ModelSettings, data: DataSettings, num_items: int, *, seed: int, item_ids: np.ndarray | None = None
) -> SequenceRecommender:
    """`model_for`'s model, built once per process and then reused, for a host that loads new
    weights into it every round (the cohort engine's SuperNodes): building it took 8-25 ms a round,
    the largest Python cost of a host's round. It holds whatever weights its last user loaded: load
    yours first."""
    catalogue = None if item_ids is None else hashlib.sha1(np.ascontiguousarray(item_ids).tobytes()).hexdigest()
    key = (model, data, num_items, catalogue)
    if key not in _HOST_MODELS:
        if len(_HOST_MODELS) >= 4:  # a process serving several runs keeps only the latest few
            _HOST_MODELS.pop(next(iter(_HOST_MODELS)))
        _HOST_MODELS[key] = model_for(model, data, num_items, seed=seed, item_ids=item_ids)
    return _HOST_MODELS[key]


def window_dataset(sequences: list[np.ndarray], max_len: int, mode: str) -> TensorDataset:
    inputs, targets, _ = training_windows(sequences, max_len, mode)
    return TensorDataset(torch.as_tensor(inputs), torch.as_tensor(targets))


def window_loader(dataset: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


@dataclass(frozen=True)
class StepOptions:
    loss: str = "ce"
    num_negatives: int = 256
    reduction: str = "sequence"  # "token": mean over the batch's positions (not with per-sample grads)
    per_sample_grads: bool = False  # True under Opacus
    proximal_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2


def train_epoch(
    model: SequenceRecommender,
    batches: Iterable,
    optimizer,  # a torch.optim optimizer, or common.training.optimizers' (zero_grad() and step())
    options: StepOptions = StepOptions(),
    device: str = "cpu",
    global_params: list[torch.Tensor] | None = None,
    progress=None,
) -> tuple[float, int]:
    """One pass over `batches`; returns (mean loss, number of sequences seen)."""
    if options.per_sample_grads:  # DP steps re-allocate B x items x emb per-sample gradients every step
        retain_freed_memory()
    model.train()
    total, seen = 0.0, 0
    for inputs, targets in batches:
        if len(inputs) == 0:  # Poisson sampling can draw an empty batch
            continue
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = next_item_loss(
            model,
            inputs,
            targets,
            loss=options.loss,
            num_negatives=options.num_negatives,
            reduction=options.reduction,
            per_sample_grads=options.per_sample_grads,
        )
        if options.proximal_mu > 0 and global_params is not None:
            drift = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
            loss = loss + options.proximal_mu / 2 * drift
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # DP noise reaches every row; padding must stay "no item"
            getattr(model, "_module", model).item_emb.weight[0].zero_()
        total += loss.item() * len(inputs)
        seen += len(inputs)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    release_freed_memory()
    return (total / seen if seen else float("nan")), seen
