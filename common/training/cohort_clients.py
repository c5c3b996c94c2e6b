"""What a SuperNode does in the cohort engine, independent of Flower's messages.

A simulated SuperNode hosts no fixed users: the server hands it chunks of this round's sampled
users (by client key), and it computes each user's update as that user's device would, chunk by
chunk with `common.training.cohort`. Chunks are fixed by the server (the round's sorted sample cut every
`cohort-chunk` users) and each chunk's dropout draws are seeded by (run seed, round, chunk), so a
run's result does not depend on how many SuperNodes or workers share the work. A real device is
the same code with a cohort of its own users (normally one) in one chunk.

The reply carries the mean of the chunk users' updates applied to the global weights with
`num-examples` = the number of users: Flower's weighted average then gives the user-level mean
over the whole cohort, and (reply - global) x count is the sum a secure aggregation would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.config import DataSettings, ModelSettings
from common.data.sequences import SequenceData, training_windows
from common.evaluation.metrics import ranking_metrics
from common.evaluation.ranking import model_scores, rank_targets
from common.training.augmentation import Augmentation, augment_windows
from common.training.cohort import LocalRecipe, cohort_update, trimmed_sum
from common.training.federated import LocalResult, client_seed
from common.training.step import host_model


@dataclass(frozen=True)
class CohortTraining:
    """What a host needs to train its chunks' users, as plain values (from the run config at the
    edge: `common.recipes.cohort_training`)."""

    model: ModelSettings
    data: DataSettings  # max-len and the item features the model is built with
    seed: int  # the run seed: each user's dropout and augmentation key derive from it
    honest: LocalRecipe
    attacker: LocalRecipe  # a simulated attack's fake users (`common.data.fake_users`)
    trim: float = 0.0  # user-trim-beta: the chunk is the whole round (checked by the config)
    augmentation: Augmentation | None = None


@dataclass(frozen=True)
class Ranking:
    """How held-out items are ranked: the cut-off, whether seen items are masked, the batch size."""

    top_k: int = 10
    mask_seen: bool = True
    batch_size: int = 512


def user_windows(
    local: SequenceData,
    rows: np.ndarray,
    max_len: int,
    seeds: np.ndarray | None = None,
    augmentation: Augmentation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(U', 1, T) inputs and targets of the users `rows` that can train (>= 2 training items), and
    their seeds (U',) from `seeds` (one per row), or None.

    `augmentation`: augment each user's window with a generator of its own seed, as its device would."""
    sequences = local.train_sequences() if len(rows) == local.num_users else None
    picked = [sequences[r] if sequences is not None else local.sequence(int(r))[:-2] for r in rows]
    inputs, targets, owners = training_windows(picked, max_len, "last")
    kept = None if seeds is None else np.asarray(seeds, dtype=np.int64)[owners]
    if augmentation is not None and len(inputs):
        if kept is None:
            raise ValueError("augmentation needs each user's seed")
        pairs = [
            augment_windows(inputs[i : i + 1], targets[i : i + 1], augmentation, np.random.default_rng(int(kept[i])))
            for i in range(len(inputs))
        ]
        inputs, targets = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    keys = None if kept is None else torch.from_numpy(kept)
    return torch.as_tensor(inputs).unsqueeze(1), torch.as_tensor(targets).unsqueeze(1), keys


def user_seeds(seed: int, server_round: int, identities: np.ndarray) -> np.ndarray:
    """Each user's training seed this round: a function of (run seed, round, the user) only."""
    return np.array([client_seed(seed, server_round, int(user)) for user in identities], dtype=np.int64)


def train_chunks(
    training: CohortTraining,
    local: SequenceData,
    chunks: list[tuple[int, np.ndarray]],
    global_arrays: dict[str, torch.Tensor],
    server_round: int,
    fakes_from: int | None = None,
    identity_offset: int = 0,
) -> LocalResult:
    """Users' local updates, chunk by chunk; `chunks` = [(chunk index, rows of `local`)].

    Rows from `fakes_from` on are an attacker's fake users (`common.data.fake_users`), trained with
    `training.attacker`. A user's identity
    (what seeds its randomness) is `identity_offset` + its row: rows of the population on a simulated
    host, the device's own key on a device."""
    model = host_model(training.model, training.data, local.num_items, seed=training.seed, item_ids=local.item_ids)
    model.load_arrays(global_arrays)
    model.train()
    recipes, trim, augmentation = (training.honest, training.attacker), training.trim, training.augmentation
    names = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in names.items()}
    users, loss_sum, clipped, rejected, fakes = 0, 0.0, 0, 0, 0
    for _, rows in chunks:
        rows = np.asarray(rows, dtype=np.int64)
        fake = rows >= fakes_from if fakes_from is not None else np.zeros(len(rows), dtype=bool)
        fakes += int(fake.sum())
        per_user = []  # with user-trim-beta: every user's update of the chunk (= the round), honest and fake
        for part, recipe in ((rows[~fake], recipes[0]), (rows[fake], recipes[1])):
            if len(part) == 0:
                continue
            # Dropout and augmentation from each user's own seed (never a DP noise source).
            seeds = user_seeds(training.seed, server_round, identity_offset + part)
            inputs, targets, keys = user_windows(local, part, model.config.max_len, seeds, augmentation)
            result = cohort_update(model, inputs, targets, recipe, keep_users=trim > 0, keys=keys)
            if trim > 0:
                per_user.append(result.per_user)
            else:
                for k in total:
                    total[k] += result.update_sum[k]
            users += result.users
            loss_sum += result.loss_sum
            clipped += result.clipped
            rejected += result.rejected
        if per_user:
            trimmed = trimmed_sum({k: torch.cat([p[k] for p in per_user]) for k in per_user[0]}, trim)
            for k in total:
                total[k] += trimmed[k]
    metrics = {"users": users, "rejected-users": rejected}
    if fakes_from is not None:
        metrics["fake-users"] = fakes  # simulation bookkeeping: a real server cannot know this
    if users == 0:
        return LocalResult(None, {"declined": 1, "num-examples": 0, **metrics})
    arrays = {k: v.detach().clone() for k, v in model.arrays().items()}
    for k in names:
        if k in arrays:
            arrays[k] = global_arrays[k] + total[k] / users
    return LocalResult(arrays, {"train-loss": loss_sum / users, "num-examples": users, "clipped": clipped, **metrics})


@torch.no_grad()
def evaluate_users(
    model_settings: ModelSettings,
    data: DataSettings,
    ranking: Ranking,
    seed: int,
    local: SequenceData,
    rows: np.ndarray,
    global_arrays: dict[str, torch.Tensor],
    split: str,
) -> dict:
    """Mean ranking metrics of `rows`' held-out item (validation or test), with their count. `seed`
    initialises the host's model the first time (its weights are replaced by `global_arrays`)."""
    model = host_model(model_settings, data, local.num_items, seed=seed, item_ids=local.item_ids)
    model.load_arrays(global_arrays)
    model.eval()
    cut = 2 if split == "validation" else 1
    sequences = [local.sequence(int(r)) for r in rows]
    histories, targets = [s[:-cut] for s in sequences], np.array([s[-cut] for s in sequences], dtype=np.int64)
    ranks, _ = rank_targets(
        model_scores(model),
        histories,
        targets,
        num_items=local.num_items,
        top_k=ranking.top_k,
        mask_seen=ranking.mask_seen,
        batch_size=ranking.batch_size,
    )
    return {**ranking_metrics(ranks, ranking.top_k), "num-examples": len(rows)}
