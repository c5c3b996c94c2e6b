"""What one client's update tells the server about the items its user interacted with.

With a tied item-embedding table, a user's training items are the rows whose update stands out:
targets are pulled towards the user's hidden states while every other row is pushed (a little)
the other way, and input rows also receive the encoder's gradient. The attack scores each row by
how far its update points against the table's average update direction, plus its relative norm,
and predicts the rows scoring above the bulk (a robust z-score > 3). Measured as precision and
recall against the user's true training items, for three views of the same update:

- no DP: the raw update the client sends;
- client-side DP: the update after local DP-SGD (Opacus) with the run's noise and clipping;
- server-side DP: the update clipped to C plus Gaussian noise. The server publishes the average
  of m updates plus N(0, (zC/m)^2); scaled back by m, one user's clipped update carries noise of
  std z*C, which is what an attacker who knows every other update faces.
"""

from __future__ import annotations

import numpy as np
import torch

from common.data.sequences import SequenceData
from common.privacy.ledger import PrivacyLedger
from common.training.federated import LocalTraining, local_train

ITEM_TABLE = "item_emb.weight"


def row_scores(delta_table: torch.Tensor) -> np.ndarray:
    """(N + 1, D) update of the item table -> (N,) attack score of items 1..N (higher = the user's)."""
    rows = delta_table[1:].double()  # (N, D) padding row excluded
    norms = rows.norm(dim=1)  # (N,)
    mean = rows.mean(0)  # (D,) the bulk's direction
    against = -(rows @ mean) / (norms * mean.norm() + 1e-30)  # (N,) cosine against the bulk
    relative = norms / (norms.median() + 1e-30)  # (N,)
    return (against + relative).numpy()


def predict_items(scores: np.ndarray) -> np.ndarray:
    """Item indices (1-based) whose score is an outlier above the bulk: robust z-score > 3."""
    median = np.median(scores)
    mad = np.median(np.abs(scores - median)) * 1.4826 + 1e-12
    return np.nonzero((scores - median) / mad > 3.0)[0] + 1


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """An empty prediction has precision 0 (it reveals nothing)."""
    predicted, truth = set(predicted.tolist()), set(truth.tolist())
    hits = len(predicted & truth)
    return (hits / len(predicted) if predicted else 0.0), (hits / len(truth) if truth else 1.0)


def clip_and_noise(
    update: dict[str, torch.Tensor], *, clipping_norm: float, noise_multiplier: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Flat L2 clipping over all arrays (as Flower's fixed-clipping DP-FedAvg), then N(0, (zC)^2)."""
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in update.values())).item()
    scale = min(1.0, clipping_norm / max(norm, 1e-30))
    return {
        k: v * scale + torch.randn(v.shape, generator=generator) * noise_multiplier * clipping_norm
        for k, v in update.items()
    }


def _update(
    training: LocalTraining, user_data: SequenceData, global_arrays: dict, user: int
) -> dict[str, torch.Tensor]:
    ledger = PrivacyLedger(training.privacy.accountant) if training.privacy.dp_mode == "client" else None
    result = local_train(training, user_data, global_arrays, server_round=0, client=int(user), ledger=ledger)
    return {k: result.arrays[k].float() - global_arrays[k].float() for k in global_arrays}


def update_leakage(
    plain: LocalTraining,
    client_dp: LocalTraining,
    data: SequenceData,
    global_arrays: dict[str, torch.Tensor],
    users: np.ndarray,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    seed: int = 0,
) -> dict:
    """Precision / recall of the item-set reconstruction for each user in `users` and each setting.

    `plain` and `client_dp`: the run's local recipe for one user alone, without DP and with DP-SGD
    at the audited noise (`common.recipes.leakage_trainings`); server DP is `plain`'s update clipped
    to `clipping_norm` plus N(0, (zC)^2)."""
    generator = torch.Generator().manual_seed(seed)
    results = {name: {"precision": [], "recall": [], "predicted": []} for name in ("no_dp", "client_dp", "server_dp")}
    base_rate = []
    for user in users:
        local = data.subset(np.array([user]))
        truth = np.unique(local.train_sequences()[0])
        base_rate.append(len(truth) / data.num_items)
        raw = _update(plain, local, global_arrays, user)
        views = {
            "no_dp": raw,
            "client_dp": _update(client_dp, local, global_arrays, user),
            "server_dp": clip_and_noise(
                raw, clipping_norm=clipping_norm, noise_multiplier=noise_multiplier, generator=generator
            ),
        }
        for name, update in views.items():
            predicted = predict_items(row_scores(update[ITEM_TABLE]))
            p, r = precision_recall(predicted, truth)
            results[name]["predicted"].append(len(predicted))
            results[name]["precision"].append(p)
            results[name]["recall"].append(r)
    summary = {name: {key: float(np.mean(values)) for key, values in v.items()} for name, v in results.items()}
    return {
        "users": len(users),
        "noise_multiplier": noise_multiplier,
        "clipping_norm": clipping_norm,
        "max_grad_norm": client_dp.privacy.max_grad_norm,
        "settings": summary,
        "random_guess_precision": float(np.mean(base_rate)) if base_rate else 0.0,
        "note": "server_dp: the user's update clipped to C plus N(0, (zC)^2), i.e. its share of the noised "
        "average scaled back by m (the strongest server, who knows every other update)",
    }
