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

from dataclasses import replace

import numpy as np
import torch

from common.config import RunConfig
from common.data.sequences import SequenceData, training_windows
from common.evaluation.metrics import ranking_metrics
from common.evaluation.ranking import model_scores, rank_targets
from common.training.augmentation import Augmentation, augment_windows, augmentation_for
from common.training.cohort import LocalRecipe, cohort_update, trimmed_sum
from common.training.federated import LocalResult, client_seed
from common.training.step import host_model


def recipe_for(config: RunConfig, simulated: bool = False) -> LocalRecipe:
    """An honest device's local recipe; `simulated`: the host also applies the server's check of each
    device's reply (max-update-norm), which a real device's reply meets at the server itself."""
    fed = config.federation
    # One training window per user, so a local epoch is one optimiser step. Under server-side DP
    # each user clips its own whole update on its device.
    clip = config.privacy.clipping_norm if config.privacy.dp_mode == "server" else 0.0
    return LocalRecipe(
        steps=fed.local_epochs,
        optimizer=fed.local_optimizer,
        lr=fed.local_lr,
        clip=clip,
        touched_rows=fed.local_item_rows == "touched",
        drop_above=fed.max_update_norm if simulated else 0.0,
        row_clip=fed.max_row_norm if simulated else 0.0,
    )


def attacker_recipe(config: RunConfig, simulated: bool = False) -> LocalRecipe:
    """A fake user's recipe: the honest steps on its fake window, boosted by sim-attack-scale, never
    clipped for DP; it knows the server's max-update-norm and stays just under it (a dropped reply
    promotes nothing). `simulated`: the server's checks apply to it as to any device (max-row-norm)."""
    bound = config.federation.max_update_norm
    return replace(recipe_for(config, simulated), scale=config.federation.sim_attack_scale, clip=bound * (1 - 1e-4))


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
    config: RunConfig,
    local: SequenceData,
    chunks: list[tuple[int, np.ndarray]],
    global_arrays: dict[str, torch.Tensor],
    server_round: int,
    simulated: bool = False,
    fakes_from: int | None = None,
    identity_offset: int = 0,
) -> LocalResult:
    """Users' local updates, chunk by chunk; `chunks` = [(chunk index, rows of `local`)].

    `simulated`: the users are simulated devices (see `recipe_for`); rows from `fakes_from` on are
    an attacker's fake users (`common.data.fake_users`), trained with `attacker_recipe`. A user's identity
    (what seeds its randomness) is `identity_offset` + its row: rows of the population on a simulated
    host, the device's own key on a device."""
    model = host_model(config, local.num_items, item_ids=local.item_ids)
    model.load_arrays(global_arrays)
    model.train()
    recipes = (recipe_for(config, simulated), attacker_recipe(config, simulated))
    trim = config.federation.user_trim_beta  # the chunk is the whole round (checked by the config)
    names = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in names.items()}
    augmentation = augmentation_for(config, local.num_items)
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
            seeds = user_seeds(config.train.seed, server_round, identity_offset + part)
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
    config: RunConfig, local: SequenceData, rows: np.ndarray, global_arrays: dict[str, torch.Tensor], split: str
) -> dict:
    """Mean ranking metrics of `rows`' held-out item (validation or test), with their count."""
    model = host_model(config, local.num_items, item_ids=local.item_ids)
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
        top_k=config.train.top_k,
        mask_seen=config.train.mask_seen,
        batch_size=config.train.eval_batch_size,
    )
    return {**ranking_metrics(ranks, config.train.top_k), "num-examples": len(rows)}
