"""Sequence augmentation of training windows: crop, mask, reorder, substitute (CL4SRec, CoSeRec).

Applied where training batches are drawn (centralized epochs, cross-silo and DP clients, the
cohort engine's per-user windows), fresh every time a window is drawn, so each epoch or round sees
other variants. Each augmented window gets one operator picked uniformly from the configured ones;
a share `1 - prob` of windows stays as it is, so the model still trains on the real order.

A window is the `max_len + 1` items a training example is cut from (left-padded inputs = its first
items, targets = the next item at each position). The operators act on that item list w (n items):

- crop: a contiguous slice of max(2, floor(keep * n)) items; order kept (CL4SRec's item crop).
- mask: floor(rate * (n - 1)) (at least one) *input* positions become 0, the padding index: the
  models have no mask token, and 0 means "no item" to them (SASRec never attends to it). The
  targets stay, so the next item is still predicted with the current one hidden.
- reorder: a contiguous run of max(2, floor(rate * n)) items is shuffled; the rest keep their places.
- substitute: max(1, round(rate * n)) items are replaced by items drawn uniformly from the
  catalogue (1..num_items). CoSeRec substitutes correlated items; uniform draws need no item
  statistics, which a device does not have.

Privacy: the operators read only the window they change plus public facts (catalogue size) and the
*training* RNG, never the DP noise RNG. Under DP-SGD an augmented example is still a function of
that one example, so per-example clipping bounds its gradient exactly as before and the accounting
(one clipped gradient per sampled example, Poisson rate unchanged) is untouched; under user-level
DP the user's whole (augmented) update is clipped as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from common.config import AUGMENTATIONS as OPERATORS
from common.config import TrainSettings, augment_operators
from common.data.sequences import left_pad


@dataclass(frozen=True)
class Augmentation:
    operators: tuple[str, ...]  # a non-empty subset of OPERATORS
    num_items: int  # catalogue size: substitutes are drawn from 1..num_items
    prob: float = 0.5  # share of drawn windows that are augmented
    crop_keep: float = 0.8  # crop keeps this share of the window's items
    mask_rate: float = 0.2  # share of input positions masked
    reorder_rate: float = 0.2  # share of the window in the shuffled run
    substitute_rate: float = 0.1  # share of items substituted

    def __post_init__(self):
        unknown = set(self.operators) - set(OPERATORS)
        if not self.operators or unknown:
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS}; got {self.operators}")


def augmentation_for(train: TrainSettings, num_items: int) -> Augmentation | None:
    """The training settings' augmentation (`augment` and its rates), or None when it is off."""
    operators = augment_operators(train.augment)
    if not operators:
        return None
    return Augmentation(
        operators=operators,
        num_items=num_items,
        prob=train.augment_prob,
        crop_keep=train.augment_crop_keep,
        mask_rate=train.augment_mask_rate,
        reorder_rate=train.augment_reorder_rate,
        substitute_rate=train.augment_substitute_rate,
    )


# --- the operators, on one window's item list (n >= 2 real items, oldest first)


def crop(items: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    length = min(len(items), max(2, int(keep * len(items))))
    start = int(rng.integers(0, len(items) - length + 1))
    return items[start : start + length].copy()


def mask_positions(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Which of a window's n - 1 input positions to mask (the last item is a target only)."""
    count = min(n - 1, max(1, int(rate * (n - 1))))
    return np.sort(rng.choice(n - 1, size=count, replace=False))


def reorder(items: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = items.copy()
    length = min(len(items), max(2, int(rate * len(items))))
    start = int(rng.integers(0, len(items) - length + 1))
    out[start : start + length] = rng.permutation(out[start : start + length])
    return out


def substitute(items: np.ndarray, rate: float, num_items: int, rng: np.random.Generator) -> np.ndarray:
    out = items.copy()
    count = min(len(items), max(1, round(rate * len(items))))
    where = rng.choice(len(items), size=count, replace=False)
    out[where] = rng.integers(1, num_items + 1, size=count)
    return out


# --- windows in, windows out


def window_items(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The items a (left-padded) training window was cut from: its real inputs, then the last target."""
    return np.append(inputs[inputs > 0], targets[-1])


def augment_windows(
    inputs: np.ndarray, targets: np.ndarray, augmentation: Augmentation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of training windows (B, T); shapes and the padding convention are kept."""
    inputs, targets = inputs.copy(), targets.copy()
    T = inputs.shape[1]
    picked = rng.random(len(inputs)) < augmentation.prob  # (B,)
    operators = rng.integers(0, len(augmentation.operators), size=len(inputs))  # (B,)
    for row in np.flatnonzero(picked):
        items = window_items(inputs[row], targets[row])
        if len(items) < 2 or targets[row, -1] == 0:  # nothing to predict: leave the row alone
            continue
        name = augmentation.operators[operators[row]]
        if name == "mask":
            where = mask_positions(len(items), augmentation.mask_rate, rng)
            inputs[row, T - (len(items) - 1) + where] = 0  # targets kept: predict with the item hidden
            continue
        if name == "crop":
            items = crop(items, augmentation.crop_keep, rng)
        elif name == "reorder":
            items = reorder(items, augmentation.reorder_rate, rng)
        else:
            items = substitute(items, augmentation.substitute_rate, augmentation.num_items, rng)
        inputs[row] = left_pad([items[:-1]], T)[0]
        targets[row] = left_pad([items[1:]], T)[0]
    return inputs, targets


class AugmentedBatches:
    """Wraps an iterable of (inputs, targets) tensor batches; augments each batch as it is drawn.

    `rng` must be the training RNG (seeded like the rest of training), never the DP noise RNG."""

    def __init__(self, batches: Iterable, augmentation: Augmentation, rng: np.random.Generator):
        self.batches, self.augmentation, self.rng = batches, augmentation, rng

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets in self.batches:
            if len(inputs) == 0:  # Poisson sampling can draw an empty batch
                yield inputs, targets
                continue
            new_inputs, new_targets = augment_windows(inputs.numpy(), targets.numpy(), self.augmentation, self.rng)
            yield torch.from_numpy(new_inputs), torch.from_numpy(new_targets)


def maybe_augmented(batches: Iterable, augmentation: Augmentation | None, seed) -> Iterable:
    """`batches` augmented with a training RNG seeded by `seed`, or unchanged when augmentation is off."""
    if augmentation is None:
        return batches
    return AugmentedBatches(batches, augmentation, np.random.default_rng(seed))
