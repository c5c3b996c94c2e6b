"""One clipped SGD step of many one-user devices without per-user weight copies (ghost clipping).

Under user-level DP each device clips its whole update to C. With one local SGD step a user's update
is -lr x its gradient g_u, so clipping needs only each user's gradient NORM, and the clipped sum is

    sum_u -lr w_u g_u,   w_u = min(1, C / (lr ||g_u||)),

the gradient of the weighted loss sum_u w_u L_u. The exact per-user path (`common.training.cohort._stacked`)
builds each user's gradient through `vmap` with a copy of the weights per user: 2.8x the cost of the
non-private round on ML-1M. Here one batched forward records, for every layer, its inputs a and the
gradients g of its outputs (one backward pass to the activations only, no weight gradients), and
every user's gradient of a weight used as a linear map is sum_k g_k a_k^T over that user's positions
k. Its squared norm needs no per-user gradient (Goodfellow 2015; Li et al. 2022 "ghost clipping"):

    ||sum_k g_k a_k^T||^2 = sum_{k,l} (a_k . a_l)(g_k . g_l)        (Gram form, cost K^2 (in + out))

or the user's gradient is materialised (cost K in out) and kept, so that the clipped sum is a
weighted sum of it; the cheaper way is taken layer by layer (the Gram form for the item table, the
materialised gradient for the small linear maps). Embedding rows are the same with a_k a one-hot
row; layer norms and biases are small enough to materialise. The scorer sees only the positions
with a target, as in the non-private path (`common.training.window_loss`): users are sorted by their number
of targets, so that the users of one length are one (users, length, .) block of the packed rows
and their Grams one batched product, with no padding. The item table is used twice (input
embedding and tied output scorer), the feature table too: their norm is the norm of the SUM of
both uses' gradients, cross terms included. The clipped sum then reuses the stored a and g, each
user's rows scaled by w_u (book-keeping, Bu et al. 2023): no second backward pass.

Measured at ML-1M shapes (simulations/benchmarks/privacy/bench_dp_round.py, BENCHMARKS.md): a DP round 1.25x the
non-private one (SASRec, GRU, SASRec with item features), where the vmap path took ~2-3x (SASRec) and ~9x (GRU).

Exact, not an approximation: the tests compare it with the `vmap` path on every model. Several local
steps, Adam, or any of the server's simulated checks need the per-user weights, and stay there; so
does a model with a parameter this module does not know how a layer uses (`supports`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.model import onednn_linear
from common.model.keyed_dropout import per_row_keys
from common.model.models import (
    FeaturedTiedScorer,
    RNNRecommender,
    SASRec,
    SequenceRecommender,
    TiedItemScorer,
    count_matrix_fits,
    feature_counts,
)
from common.training.window_loss import users_loss_sum


@dataclass
class ClippedStep:
    update_sum: dict[str, torch.Tensor]  # sum over users of their clipped update
    loss_sum: float  # sum over users of their mean loss
    clipped: int  # users whose update was scaled down


@dataclass
class _Rows:
    """A weight's per-user gradient sum_k g_k a_k^T over the user's rows k, in rows offset.. of the
    weight. Rows are packed user after user: user u has lengths[u] of them."""

    a: torch.Tensor  # (P, cols)
    g: torch.Tensor  # (P, rows used)
    lengths: torch.Tensor  # (U,) rows per user, sum P
    offset: int = 0

    def blocks(self):
        """(first user, last user + 1, a (users, n, cols), g (users, n, rows)) for each run of users
        with the same number of rows n > 0."""
        values, counts = torch.unique_consecutive(self.lengths, return_counts=True)
        user, row = 0, 0
        for n, users in zip(values.tolist(), counts.tolist()):
            size = n * users
            if n > 0:
                a, g = self.a[row : row + size], self.g[row : row + size]
                yield user, user + users, a.view(users, n, -1), g.view(users, n, -1)
            user, row = user + users, row + size


@dataclass
class _Lookup:
    """An embedding table's per-user gradient: g[u, k] added to row index[u, k] (none to padding_idx)."""

    index: torch.Tensor  # (U, K)
    g: torch.Tensor  # (U, K, cols)
    padding_idx: int | None


_LAYERS = (nn.Linear, nn.Embedding, nn.LayerNorm, TiedItemScorer, FeaturedTiedScorer)

# How a per-user squared norm is taken: "cheaper" picks, layer by layer, the Gram form or the
# materialised gradient by their cost; "gram" or "materialise" always takes that one (the tests run
# all three, so every form stays exact whatever the model's sizes make the cost model pick).
FORM = "cheaper"
SMALL_WEIGHT = 1 << 16  # elements; a weight with several uses below it: each user's gradient materialised
KEEP_DENSE = 1 << 23  # elements (32 MB); materialised per-user gradients up to this size are kept for the sum


def supports(model: SequenceRecommender) -> bool:
    """Whether every parameter of `model` is used only through layers this module knows."""
    if not isinstance(model, (SASRec, RNNRecommender)) or model.item_up is not None:
        return False  # item_up's weight is also used outside its module (to_table_space)
    if model.has_features and not count_matrix_fits(model.config.num_items, model.config.num_features + 1):
        return False
    for module in model.modules():  # layers whose gradient is not the plain one of their map
        if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq):
            return False
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            return False
    # An RNN registers its cells' weights once more under PyTorch's names: covered all the same.
    covered = {id(p) for m in model.modules() if isinstance(m, _LAYERS) for p in m.parameters(recurse=False)}
    return all(id(p) in covered for p in model.parameters())


def clipped_one_step(
    model: SequenceRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    lr: float,
    clip: float,
    keys: torch.Tensor | None = None,
) -> ClippedStep:
    """U users' one-step SGD updates from the model's weights, each clipped to `clip`; inputs/targets
    (U, W, T). `keys` (U,): each user's own dropout randomness (`common.model.keyed_dropout`), which follows
    the user through the reordering below."""
    U = len(inputs)
    scored = (targets > 0).flatten(1).sum(1)  # (U,) each user's scored positions
    order = torch.argsort(scored, stable=True)  # a sum does not depend on the users' order
    inputs, targets, scored = inputs[order], targets[order], scored[order]
    rows = per_row_keys(keys[order].repeat_interleave(inputs.shape[1])) if keys is not None else nullcontext()
    calls: list[tuple[nn.Module, tuple, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args, out)))
        for m in model.modules()
        if isinstance(m, _LAYERS)
    ]
    try:
        params = dict(model.named_parameters())
        with rows, onednn_linear.weight_gradient_unused():
            total = users_loss_sum(model, inputs, targets)
    finally:
        for hook in hooks:
            hook.remove()
    # Gradients of the layers' outputs only: autograd computes no weight gradient on the way.
    output_grads = torch.autograd.grad(total, [out for _, _, out in calls], allow_unused=True)
    with torch.no_grad():
        uses = _uses(model, calls, output_grads, U, scored)
        names = {id(p): name for name, p in params.items()}
        squared = torch.zeros(U, dtype=total.dtype)
        for key, parts in uses.items():
            of_param, uses[key] = _squared_norm(parts, params[names[key]].shape)
            squared += of_param
        norms = lr * squared.clamp(min=0).sqrt()  # (U,) each user's update norm
        scale = (clip / norms.clamp(min=1e-12)).clamp(max=1.0)  # (U,)
        update = {name: torch.zeros_like(p) for name, p in params.items()}
        for key, parts in uses.items():
            grad = update[names[key]]
            for part in parts:
                _add_weighted(grad, part, scale)
            grad.mul_(-lr)
    return ClippedStep(update, float(total.detach()), int((scale < 1).sum()))


def _uses(model, calls, output_grads, U: int, scored: torch.Tensor) -> dict[int, list]:
    """id(parameter) -> each use's per-user gradient, from the recorded layer calls; `scored` (U,):
    each user's rows of the scorer's packed input."""
    by_layer: dict[nn.Module, tuple[list, list]] = {}
    for (module, args, out), g in zip(calls, output_grads):
        inputs, grads = by_layer.setdefault(module, ([], []))
        inputs.append(args)
        grads.append(torch.zeros_like(out) if g is None else g)
    uses: dict[int, list] = {}

    def add(param: torch.Tensor, part) -> None:
        uses.setdefault(id(param), []).append(part)

    for module, (inputs, grads) in by_layer.items():
        if isinstance(module, (TiedItemScorer, FeaturedTiedScorer)):
            (args,), (g,) = inputs, grads  # one call: (M, D) packed states -> (M, N) scores
            hidden = args[-1]
            add(module.weight, _Rows(hidden, g, scored, offset=1))  # scores use rows 1..N
            if isinstance(module, FeaturedTiedScorer):
                # table = E[1:] + counts @ F: F's gradient is counts^T (G^T H) = (G counts)^T H.
                counts = feature_counts(model.feature_index[1:], module.feature_weight.shape[0], g.dtype)  # (N, V+1)
                add(
                    module.feature_weight,
                    _Rows(hidden, onednn_linear.times_transposed(g, counts.T.contiguous()), scored),
                )
        elif isinstance(module, nn.Linear):
            a = _positions([args[0] for args in inputs], U, module.in_features)  # (U, K, in)
            g = _positions(grads, U, module.out_features)  # (U, K, out)
            lengths = torch.full((U,), a.shape[1])
            add(module.weight, _Rows(a.flatten(0, 1), g.flatten(0, 1), lengths))
            if module.bias is not None:
                add(module.bias, g.sum(1))
        elif isinstance(module, nn.Embedding):
            index = _positions([args[0] for args in inputs], U)  # (U, K)
            add(module.weight, _Lookup(index, _positions(grads, U, module.embedding_dim), module.padding_idx))
        elif isinstance(module, nn.LayerNorm):
            width = module.normalized_shape[-1]
            x, g = _positions([args[0] for args in inputs], U, width), _positions(grads, U, width)  # (U, K, D)
            if module.weight is not None:
                add(module.weight, (g * F.layer_norm(x, module.normalized_shape, eps=module.eps)).sum(1))
            if module.bias is not None:
                add(module.bias, g.sum(1))
    return uses


def _positions(tensors: list[torch.Tensor], U: int, width: int | None = None) -> torch.Tensor:
    """A layer's calls' (B, ..., width) tensors -> (U, K, width), K = every position of a user's
    windows in every call (an RNN cell's linear map is called once per time step)."""
    parts = [t.reshape(U, -1, width) if width is not None else t.reshape(U, -1) for t in tensors]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # one call: a view, no copy


def _squared_norm(parts: list, shape: torch.Size) -> tuple[torch.Tensor, list]:
    """(U,) squared norm of each user's gradient of one parameter (the sum of its uses' gradients),
    and its uses again: a per-user gradient materialised here replaces its use, and the clipped sum
    is then a weighted sum of it instead of a product of the factors."""
    if len(parts) == 1:
        part = parts[0]
        if isinstance(part, _Rows) and _gram_for(_gram_is_cheaper(part)):
            return _inner(part, part, shape), parts
        if isinstance(part, _Lookup) and _gram_for(_lookup_gram_is_cheaper(part, shape[0])):
            return _lookup_inner(part, part), parts
        dense = _dense(part, shape)
        return _squares(dense), [dense] if dense.numel() <= KEEP_DENSE else parts
    if not _gram_for(shape.numel() > SMALL_WEIGHT):  # a small weight (the feature table)
        dense = sum(_dense(part, shape) for part in parts)
        return _squares(dense), [dense] if dense.numel() <= KEEP_DENSE else parts
    # A large shared table (the item table: input lookup + tied scorer): every pair of uses.
    total = 0
    for i, p in enumerate(parts):
        for j, q in enumerate(parts[i:], start=i):
            total = total + (1 if i == j else 2) * _inner(p, q, shape)
    return total, parts


def _squares(per_user: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(per_user, dim=tuple(range(1, per_user.dim()))).square()  # any strides


def _gram_for(cheaper: bool) -> bool:
    return FORM == "gram" or (FORM == "cheaper" and cheaper)


def _gram_is_cheaper(part: _Rows) -> bool:
    """Multiply-adds of the Gram form (and then of the clipped sum's product of the factors) against
    materialising each user's gradient (kept, if small enough, for a weighted sum of it)."""
    cols, rows, n = part.a.shape[1], part.g.shape[1], part.lengths.double()
    factors = float(n.sum()) * cols * rows  # sum_u n_u cols rows: a product of the factors
    users = len(n) * cols * rows  # every user's whole gradient once
    gram = float((n * n).sum()) * (cols + rows) + factors
    kept = users <= KEEP_DENSE
    materialised = factors + (2 * users if kept else users + factors)
    return gram < materialised


def _lookup_gram_is_cheaper(part: _Lookup, rows: int) -> bool:
    K, cols = part.g.shape[1], part.g.shape[2]
    return K * K * (cols + 1) < rows * cols + K * cols


def _inner(p, q, shape: torch.Size) -> torch.Tensor:
    """(U,) inner product of two uses' per-user gradients of one weight."""
    if isinstance(p, _Lookup) and isinstance(q, _Rows):
        p, q = q, p
    if isinstance(p, _Lookup) and isinstance(q, _Lookup):
        return _lookup_inner(p, q)
    if isinstance(p, _Rows) and q is p:
        out = torch.zeros(len(p.lengths), dtype=p.a.dtype)
        for first, last, a, g in p.blocks():  # sum_{k,l} (a_k . a_l)(g_k . g_l)
            out[first:last] = (onednn_linear.gram(a) * onednn_linear.gram(g)).sum((1, 2))
        return out
    if isinstance(p, _Rows) and isinstance(q, _Lookup):
        # <sum_k g_k a_k^T (rows offset..), sum_l e_{i_l} v_l^T> = sum_{k,l} g[k, i_l - offset] (a_k . v_l)
        rows = p.g.shape[1]
        local = q.index - p.offset  # (U, L) the lookup's rows in the scorer's numbering
        inside = (local >= 0) & (local < rows)
        if q.padding_idx is not None:
            inside &= q.index != q.padding_idx
        local = local.clamp(0, rows - 1)
        out = torch.zeros(len(p.lengths), dtype=p.a.dtype)
        for first, last, a, g in p.blocks():
            picked = torch.gather(g, 2, local[first:last].unsqueeze(1).expand(-1, g.shape[1], -1))  # (users, n, L)
            products = torch.bmm(a, q.g[first:last].transpose(1, 2))  # (users, n, L)
            out[first:last] = (picked * products * inside[first:last].unsqueeze(1)).sum((1, 2))
        return out
    return (_dense(p, shape) * _dense(q, shape)).flatten(1).sum(1)


def _lookup_inner(p: _Lookup, q: _Lookup) -> torch.Tensor:
    """(U,) sum_{k,l} [i_k = j_l, not padding] (v_k . w_l)."""
    same = p.index.unsqueeze(2) == q.index.unsqueeze(1)  # (U, K, L)
    if p.padding_idx is not None:
        same &= (p.index != p.padding_idx).unsqueeze(2)
    return (torch.bmm(p.g, q.g.transpose(1, 2)) * same).sum((1, 2))


def _dense(part, shape: torch.Size) -> torch.Tensor:
    """(U, *shape) the use's per-user gradient."""
    if isinstance(part, torch.Tensor):
        return part
    if isinstance(part, _Rows):
        blocks = list(part.blocks())
        if len(blocks) == 1 and blocks[0][:2] == (0, len(part.lengths)) and part.g.shape[1] == shape[0]:
            _, _, a, g = blocks[0]
            # (users, cols, rows), seen as (users, rows, cols): bmm runs several times faster this way round
            return torch.bmm(a.transpose(1, 2), g).transpose(1, 2)
        out = torch.zeros(len(part.lengths), *shape, dtype=part.a.dtype)
        for first, last, a, g in blocks:
            out[first:last, part.offset : part.offset + g.shape[2]] = torch.bmm(a.transpose(1, 2), g).transpose(1, 2)
        return out
    U, K, cols = part.g.shape
    out = torch.zeros(U * shape[0], cols, dtype=part.g.dtype)
    rows = part.index + shape[0] * torch.arange(U).unsqueeze(1)  # (U, K) row in the flattened (U * rows)
    values = part.g if part.padding_idx is None else part.g * (part.index != part.padding_idx).unsqueeze(-1)
    out.index_add_(0, rows.flatten(), values.reshape(U * K, cols))
    return out.view(U, *shape)


def _add_weighted(grad: torch.Tensor, part, scale: torch.Tensor) -> None:
    """grad += sum_u scale_u x user u's gradient of this use."""
    if isinstance(part, torch.Tensor):
        if part.dim() == 3 and part.transpose(1, 2).is_contiguous():  # a materialised product, turned
            grad += torch.tensordot(scale, part.transpose(1, 2), dims=1).T
        else:
            grad += torch.tensordot(scale, part, dims=1)
    elif isinstance(part, _Rows):
        weights = scale.repeat_interleave(part.lengths).unsqueeze(1)  # (P, 1)
        a, g = part.a, part.g
        if a.shape[1] <= g.shape[1]:  # scale the thinner factor
            a = a * weights
        else:
            g = g * weights
        grad[part.offset : part.offset + g.shape[1]] += g.T @ a
    else:
        U, K, cols = part.g.shape
        values = part.g * scale.view(U, 1, 1)
        if part.padding_idx is not None:
            values = values * (part.index != part.padding_idx).unsqueeze(-1)
        grad.index_add_(0, part.index.flatten(), values.reshape(U * K, cols))
