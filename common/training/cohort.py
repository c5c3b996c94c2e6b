"""The cohort engine: many one-user devices' local updates computed at once.

Each user's update is exactly what that user's device computes: start from the global weights,
take `steps` optimiser steps (SGD, or Adam with the user's own moments) on the user's training
window alone, optionally clip the whole update to `clip`. Users are stacked along a leading axis
and trained together with `torch.func` (`functional_call` + `grad` + `vmap`): one set of weights
per user, no Python loop of models. The result is the sum of the users' updates and their count:
what a server learns from a secure aggregation of those devices.

One SGD step without clipping has a cheaper exact form: the sum of the users' updates is -lr
times the gradient of the sum of their losses at the global weights, one batched backward pass.
With clipping too (user-level DP), `common.training.ghost_clipping` clips from each user's gradient norm.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from common.model.keyed_dropout import per_row_keys
from common.model.models import SequenceRecommender
from common.training import ghost_clipping
from common.training.allocator import retain_freed_memory
from common.training.window_loss import users_loss_sum


@dataclass(frozen=True)
class LocalRecipe:
    steps: int = 1  # optimiser steps per user per round (one window per user: one step per local epoch)
    optimizer: str = "sgd"  # "sgd" or "adam" (each user with its own moments, fresh every round)
    lr: float = 1.0
    clip: float = 0.0  # > 0: each user's whole update clipped to this L2 norm
    touched_rows: bool = False  # only the item-table rows of the user's own items change (local-item-rows)
    # The server's check of each device's reply (max-update-norm), when the devices are simulated:
    # a user whose update is longer is left out, as the server would drop its reply.
    drop_above: float = 0.0
    # The server's per-row clip of each device's item-table update (max-row-norm), when the devices are
    # simulated: no device moves one item's row further than this, however long its whole update.
    row_clip: float = 0.0
    scale: float = 1.0  # an attacker's boost of its update, before `clip`; every honest device: 1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    score_precision: str = "float32"  # bfloat16: the one-step path's scoring (`window_loss.users_loss_sum`)


@dataclass
class CohortResult:
    update_sum: dict[str, torch.Tensor]  # sum over users of (local weights - global weights)
    users: int
    loss_sum: float  # sum over users of the mean loss of their first local step
    clipped: int = 0  # users whose update was scaled down by `clip`
    rejected: int = 0  # users left out by `drop_above` (not counted in `users`)
    per_user: dict[str, torch.Tensor] | None = None  # keep_users: each counted user's update, (users, ...)


def user_loss(
    model: SequenceRecommender, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean next-item cross-entropy of one user's windows (W, T); target 0 = no prediction.

    Shape-static (no boolean indexing), so it vmaps over users; equal to `common.model.losses` "ce"."""
    logits = functional_call(model, params, (inputs,))  # (W, T, N)
    valid = (targets > 0).to(logits.dtype)  # (W, T)
    token = F.cross_entropy(logits.flatten(0, 1), (targets - 1).clamp(min=0).flatten(), reduction="none")  # (W*T,)
    per_window = (token.view(targets.shape) * valid).sum(-1) / valid.sum(-1).clamp(min=1)  # (W,)
    return per_window.mean()


def cohort_update(
    model: SequenceRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    recipe: LocalRecipe,
    keep_users: bool = False,
    keys: torch.Tensor | None = None,
) -> CohortResult:
    """Local updates of U users from the model's current (global) weights; inputs/targets (U, W, T).
    `keep_users`: also return each user's update (for an aggregation other than the sum).

    `keys` (U,) int64: each user's own randomness (its dropout masks, `common.model.keyed_dropout`), so that
    a user's update never depends on who else is in the batch. Without keys, dropout draws from
    torch's global RNG in batch order (seed it for a reproducible result)."""
    # Every chunk frees and re-allocates the same large (positions, items) score tensors: keep that
    # memory in the heap instead of page-faulting it back in, zeroed, each time (~25% of a chunk).
    retain_freed_memory()
    if len(inputs) == 0:
        zeros = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
        per_user = {k: v.unsqueeze(0)[:0] for k, v in zeros.items()} if keep_users else None
        return CohortResult(zeros, 0, 0.0, per_user=per_user)
    # Nothing but the optional clip needs each user's own update:
    summed = recipe.drop_above <= 0 and recipe.row_clip <= 0 and recipe.scale == 1.0 and not recipe.touched_rows
    one_sgd_step = recipe.steps == 1 and recipe.optimizer == "sgd" and summed and not keep_users
    if one_sgd_step and recipe.clip <= 0:
        return _one_sgd_step(model, inputs, targets, recipe.lr, keys, recipe.score_precision)
    if one_sgd_step and ghost_clipping.supports(model):  # clipped: each user's gradient norm, no weight copies
        step = ghost_clipping.clipped_one_step(model, inputs, targets, recipe.lr, recipe.clip, keys)
        return CohortResult(step.update_sum, len(inputs), step.loss_sum, step.clipped)
    return _stacked(model, inputs, targets, recipe, keep_users, keys)


def _one_sgd_step(
    model, inputs, targets, lr: float, keys: torch.Tensor | None = None, precision: str = "float32"
) -> CohortResult:
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    with per_row_keys(keys.repeat_interleave(inputs.shape[1])) if keys is not None else nullcontext():
        total = users_loss_sum(model, inputs, targets, precision)  # its gradient: the sum of the users' gradients
    total.backward()
    update = {k: -lr * p.grad.detach() for k, p in params.items()}
    model.zero_grad(set_to_none=True)
    return CohortResult(update, len(inputs), float(total.detach()))


def _stacked(model, inputs, targets, recipe: LocalRecipe, keep_users: bool = False, keys=None) -> CohortResult:
    base = {k: p.detach() for k, p in model.named_parameters()}
    U = len(inputs)
    params = {k: v.unsqueeze(0).repeat(U, *([1] * v.dim())) for k, v in base.items()}  # (U, ...)
    moments = (
        ({k: torch.zeros_like(v) for k, v in params.items()}, {k: torch.zeros_like(v) for k, v in params.items()})
        if recipe.optimizer == "adam"
        else None
    )

    def keyed_loss(p, x, y, key):
        with per_row_keys(key) if keys is not None else nullcontext():
            return user_loss(model, p, x, y)

    grads_and_loss = vmap(grad_and_value(keyed_loss), randomness="different")
    key_batch = keys if keys is not None else torch.zeros(U, dtype=torch.int64)
    row_mask = touched_rows(inputs, targets, model.config.num_items) if recipe.touched_rows else None  # (U, N+1)
    table = item_table_name(model)
    first_loss = 0.0
    for step in range(1, recipe.steps + 1):
        grads, losses = grads_and_loss(params, inputs, targets, key_batch)  # {k: (U, ...)}, (U,)
        if step == 1:
            first_loss = float(losses.sum())
        if row_mask is not None:
            grads[table] = grads[table] * row_mask.unsqueeze(-1)  # untouched rows: no gradient, no Adam moment
        with torch.no_grad():
            if moments is None:
                params = {k: params[k] - recipe.lr * grads[k] for k in params}
            else:
                params = _adam(params, grads, moments, step, recipe)
    with torch.no_grad():
        update = {k: recipe.scale * (params[k] - base[k]) for k in params}  # (U, ...)
        clipped = rejected = 0
        if recipe.clip > 0:
            scale = (recipe.clip / _norms(update).clamp(min=1e-12)).clamp(max=1.0)  # (U,)
            clipped = int((scale < 1).sum())
            update = _scaled(update, scale)
        kept = _norms(update) <= recipe.drop_above if recipe.drop_above > 0 else torch.ones(U, dtype=torch.bool)
        rejected = int((~kept).sum())
        update = {k: u[kept] for k, u in update.items()}
        if recipe.row_clip > 0:
            update[table] = clip_rows(update[table], recipe.row_clip)
        return CohortResult(
            {k: u.sum(0) for k, u in update.items()},
            U - rejected,
            first_loss,
            clipped,
            rejected,
            update if keep_users else None,
        )


def trimmed_sum(per_user: dict[str, torch.Tensor], beta: float) -> dict[str, torch.Tensor]:
    """U x the coordinate-wise trimmed mean of U users' updates (the largest and smallest
    floor(beta U) values of each coordinate left out; Yin et al. 2018): a sum, so that dividing by U
    gives the trimmed mean. A few extreme users (fake ones pushing one item's row) cannot move a
    coordinate that the rest of the cohort leaves alone."""
    out = {}
    for name, u in per_user.items():
        U = len(u)
        cut = int(beta * U)
        if U == 0 or cut == 0:
            out[name] = u.sum(0)
            continue
        flat = u.reshape(U, -1)
        columns = []
        for start in range(0, flat.shape[1], 1 << 16):  # a block of coordinates at a time: bounded memory
            block = flat[:, start : start + (1 << 16)]
            # the sum less the `cut` largest and `cut` smallest values (top-k: no full sort)
            kept = block.sum(0) - block.topk(cut, dim=0).values.sum(0) + (-block).topk(cut, dim=0).values.sum(0)
            columns.append(kept * (U / (U - 2 * cut)))
        out[name] = torch.cat(columns).reshape(u.shape[1:])
    return out


def clip_rows(table_update: torch.Tensor, bound: float) -> torch.Tensor:
    """Each user's update of each item row, (U, N + 1, D), scaled down to at most `bound` (L2).

    The whole-update bound leaves a device free to spend all of it on one row; this one bounds what a
    device can do to any single item, so a fake user pushes its target no harder than an honest user
    pushes an item it holds (hierarchical clipping, Yuan et al. 2023)."""
    norms = table_update.norm(dim=-1, keepdim=True)  # (U, N + 1, 1)
    return table_update * (bound / norms.clamp(min=1e-12)).clamp(max=1.0)


def _norms(update: dict[str, torch.Tensor]) -> torch.Tensor:
    """(U,) L2 norm of each user's whole update."""
    return torch.sqrt(sum(u.flatten(1).pow(2).sum(1) for u in update.values()))


def _scaled(update: dict[str, torch.Tensor], factor: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: u * factor.view(-1, *([1] * (u.dim() - 1))) for k, u in update.items()}


def touched_rows(inputs: torch.Tensor, targets: torch.Tensor, num_items: int) -> torch.Tensor:
    """(U, N + 1) float mask: 1 on the rows of items in each user's windows (inputs or targets), 0 elsewhere
    and on padding row 0."""
    items = torch.cat([inputs.flatten(1), targets.flatten(1)], 1)  # (U, 2 W T)
    mask = torch.zeros(len(items), num_items + 1, dtype=torch.float32)
    mask.scatter_(1, items, 1.0)
    mask[:, 0] = 0.0
    return mask


def item_table_name(model: SequenceRecommender) -> str:
    """The parameter name of the item table (shared by the input embedding and the tied scorer)."""
    return next(name for name, p in model.named_parameters() if p is model.item_emb.weight)


def _adam(params, grads, moments, step: int, recipe: LocalRecipe):
    first, second = moments
    b1, b2 = recipe.betas
    correction = math.sqrt(1 - b2**step) / (1 - b1**step)
    out = {}
    for k in params:
        first[k].mul_(b1).add_(grads[k], alpha=1 - b1)
        second[k].mul_(b2).addcmul_(grads[k], grads[k], value=1 - b2)
        denominator = second[k].sqrt() + recipe.eps * math.sqrt(1 - b2**step)
        out[k] = params[k] - recipe.lr * correction * first[k] / denominator
    return out
