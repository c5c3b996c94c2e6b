"""Opacus per-sample-gradient rules for the models' own layers (`common.model.models`).

Registered with Opacus when this module is imported, which `common.privacy.dpsgd` (and any code
that builds a GradSampleModule) does; the models themselves never import Opacus, so a ClientApp
that trains without DP-SGD starts without it (about a second less per process).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.embedding import compute_embedding_grad_sample

from common.logs import drop_opacus_root_handler
from common.model.models import (
    FeaturedTiedScorer,
    ItemEmbedding,
    TiedItemScorer,
    count_matrix_fits,
    feature_counts,
)


@register_grad_sampler(ItemEmbedding)
def _item_embedding_grad_sample(layer: ItemEmbedding, activations, backprops: torch.Tensor):
    grads = compute_embedding_grad_sample(layer, activations, backprops)
    if layer.padding_idx is not None and layer.weight in grads:
        grads[layer.weight][:, layer.padding_idx] = 0.0  # (B, N + 1, D): padding row never learns
    return grads


@register_grad_sampler(FeaturedTiedScorer)
def _featured_scorer_grad_sample(layer: FeaturedTiedScorer, activations, backprops: torch.Tensor):
    feature_index, hidden = activations[0], activations[1]  # (N + 1, S), (B, ..., D)
    per_item = torch.einsum("b...n,b...d->bnd", backprops, hidden)  # (B, N, D): d loss / d item vector
    index = feature_index[1:]  # (N, S)
    B, N, D = per_item.shape
    V1 = layer.feature_weight.shape[0]
    if count_matrix_fits(N, V1):  # (B, V + 1, D): each item's gradient to its features, one product
        features = torch.einsum("nv,bnd->bvd", feature_counts(index, V1, per_item.dtype), per_item)
    else:  # the same sums as a scatter: no (N, V + 1) matrix, but an (B, N * S, D) spread
        S = index.shape[1]
        spread = (per_item.unsqueeze(2) * (index > 0).view(1, N, S, 1).to(per_item.dtype)).reshape(B, N * S, D)
        features = torch.zeros(B, V1, D, dtype=per_item.dtype, device=per_item.device)
        features.index_add_(1, index.reshape(-1), spread)
        features[:, 0] = 0.0
    return {layer.weight: F.pad(per_item, (0, 0, 1, 0)), layer.feature_weight: features}


@register_grad_sampler(TiedItemScorer)
def _tied_scorer_grad_sample(layer: TiedItemScorer, activations, backprops: torch.Tensor):
    hidden = activations[0]  # (B, ..., D)
    per_sample = torch.einsum("b...n,b...d->bnd", backprops, hidden)  # (B, N, D)
    return {layer.weight: F.pad(per_sample, (0, 0, 1, 0))}  # (B, N + 1, D): padding row gets 0


drop_opacus_root_handler(load=False)
