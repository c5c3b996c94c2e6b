"""User-level membership inference against the final model (Zhang et al., CCS 2021).

Members are training users, non-members the run's holdout users. The attack scores a user by how
well the model fits the user's training history: mean next-item cross-entropy (lower = member)
and mean log-rank of each next item (lower = member). Reported: ROC AUC, TPR at 0.1% and 1% FPR,
with bootstrap confidence intervals, and the ROC curve next to what (epsilon, delta)-DP allows.

Whether the attack refutes a DP claim is decided by `epsilon_lower_bound`, not by the bootstrap
figures: a TPR "at 0.1% FPR" measured on 20 non-members is a TPR at an FPR that may really be 14%,
and picking the best of many thresholds needs a correction. The bound holds at 95% over all
thresholds and both attacks together (Clopper-Pearson on both rates, Bonferroni over thresholds and
over the two attacks: each attack at 97.5%), so a run that is (epsilon, delta)-DP fails the check
with probability at most 5%, not the 10% two uncorrected 95% tests would allow.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from common.data.sequences import training_windows
from common.model.models import SequenceRecommender

FPR_POINTS = (0.001, 0.01)
ATTACKS = ("loss", "log_rank")
AUDIT_CONFIDENCE = 0.95  # over every attack together
ATTACK_CONFIDENCE = 1 - (1 - AUDIT_CONFIDENCE) / len(ATTACKS)  # Bonferroni over the attacks


@torch.no_grad()
def sequence_scores(
    model: SequenceRecommender, sequences: list[np.ndarray], *, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Per sequence: mean next-item CE and mean log(1 + rank) of the next item over all of it (in
    windows of the model's context length)."""
    model.eval()
    inputs, targets, owners = training_windows(sequences, model.config.max_len, "all")
    loss_sum, rank_sum, count = (np.zeros(len(sequences)) for _ in range(3))
    for start in range(0, len(inputs), batch_size):
        x = torch.as_tensor(inputs[start : start + batch_size])  # (B, T)
        y = torch.as_tensor(targets[start : start + batch_size])  # (B, T)
        valid = y > 0  # (B, T)
        logits = model.score(model.encode(x)[valid])  # (M, N)
        target = y[valid] - 1  # (M,)
        ce = F.cross_entropy(logits, target, reduction="none")  # (M,)
        rank = (logits > logits.gather(1, target[:, None])).sum(1).float()  # (M,) 0 = top
        rows = owners[start : start + batch_size][valid.nonzero()[:, 0].numpy()]  # (M,)
        np.add.at(loss_sum, rows, ce.numpy())
        np.add.at(rank_sum, rows, np.log1p(rank.numpy()))
        np.add.at(count, rows, 1)
    count = np.maximum(count, 1)
    return {"loss": loss_sum / count, "log_rank": rank_sum / count}


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for the rule "score >= threshold -> member", over every threshold (higher = member)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each distinct score
    tpr = np.r_[0.0, np.cumsum(labels)[last] / max(labels.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(1 - labels)[last] / max((1 - labels).sum(), 1)]
    return fpr, tpr


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + 1/2 P(tie) (Mann-Whitney)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n1, n0 = len(member_scores), len(nonmember_scores)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR of any threshold whose FPR is at most `target`."""
    return float(tpr[fpr <= target + 1e-12].max())


def attack_metrics(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, *, bootstrap: int = 200, seed: int = 0
) -> dict:
    """AUC and TPR at low FPR, each with a 95% bootstrap interval (members and non-members resampled)."""

    def point(m, n):
        fpr, tpr = roc_curve(m, n)
        return [roc_auc(m, n)] + [tpr_at_fpr(fpr, tpr, f) for f in FPR_POINTS]

    names = ["auc"] + [f"tpr_at_{f:g}_fpr" for f in FPR_POINTS]
    estimate = point(member_scores, nonmember_scores)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            point(rng.choice(member_scores, len(member_scores)), rng.choice(nonmember_scores, len(nonmember_scores)))
            for _ in range(bootstrap)
        ]
    )
    low, high = np.quantile(draws, [0.025, 0.975], axis=0)
    return {
        name: {"value": float(v), "ci95": [float(lo), float(hi)]} for name, v, lo, hi in zip(names, estimate, low, high)
    }


def dp_tpr_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """Largest TPR an (epsilon, delta)-DP mechanism allows at each FPR (Kairouz et al. 2015):
    TPR <= e^eps FPR + delta and 1 - FPR >= e^eps (1 - TPR) - ... i.e. TPR <= 1 - e^-eps (1 - delta - FPR)."""
    fpr = np.asarray(fpr, dtype=float)
    first = math.exp(min(epsilon, 700)) * fpr + delta
    second = 1 - math.exp(-epsilon) * (1 - delta - fpr)
    return np.clip(np.minimum(first, second), 0.0, 1.0)


def epsilon_lower_bound(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, *, delta: float, confidence: float = 0.95
) -> dict:
    """The largest epsilon the rule "score >= t -> member" refutes for some threshold t, at `confidence`
    over every threshold tried: at each t a one-sided Clopper-Pearson lower bound on the TPR and upper
    bound on the FPR, each at level (1 - confidence) / (2 T) for T thresholds, then (Kairouz et al.)
    TPR <= e^eps FPR + delta and 1 - delta - FPR <= e^eps (1 - TPR) solved for eps.
    Returns the bound (0 when nothing is refuted) and the threshold's counts and rate bounds."""
    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    n1, n0 = len(members), len(nonmembers)
    if n1 == 0 or n0 == 0:
        raise ValueError(f"need members and non-members to bound epsilon, got {n1} and {n0}")
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    alpha = (1 - confidence) / (2 * len(thresholds))
    tp = (members[None, :] >= thresholds[:, None]).sum(1)
    fp = (nonmembers[None, :] >= thresholds[:, None]).sum(1)
    tpr_low = np.where(tp > 0, stats.beta.ppf(alpha, np.maximum(tp, 1), n1 - tp + 1), 0.0)
    fpr_high = np.where(fp < n0, stats.beta.ppf(1 - alpha, fp + 1, np.maximum(n0 - fp, 1)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.maximum(tpr_low - delta, 0) / fpr_high)
        second = np.log(np.maximum(1 - delta - fpr_high, 0) / (1 - tpr_low))
    bounds = np.nan_to_num(np.maximum(first, second), nan=-np.inf)
    best = int(np.argmax(bounds))
    return {
        "epsilon": float(max(bounds[best], 0.0)),
        "confidence": confidence,
        "thresholds": len(thresholds),
        "at": {
            "true_positives": int(tp[best]),
            "false_positives": int(fp[best]),
            "tpr_lower": float(tpr_low[best]),
            "fpr_upper": float(fpr_high[best]),
        },
    }


def membership_inference(
    model: SequenceRecommender,
    members: list[np.ndarray],
    nonmembers: list[np.ndarray],
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Both attacks on the given users' training sequences. `delta` adds the epsilon each attack proves
    at that delta; `epsilon` (a DP run's claim, with its delta) adds the TPR bound the claim allows."""
    if epsilon is not None and delta is None:
        raise ValueError("a claimed epsilon needs its delta")
    member = sequence_scores(model, members)
    nonmember = sequence_scores(model, nonmembers)
    result = {"members": len(members), "nonmembers": len(nonmembers), "attacks": {}, "curves": {}}
    for name in ATTACKS:
        m, n = -member[name], -nonmember[name]  # higher = member
        result["attacks"][name] = attack_metrics(m, n, bootstrap=bootstrap, seed=seed)
        fpr, tpr = roc_curve(m, n)
        result["curves"][name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        result["attacks"][name]["mean_member"] = float(member[name].mean())
        result["attacks"][name]["mean_nonmember"] = float(nonmember[name].mean())
        if delta is not None:
            result["attacks"][name]["epsilon_lower_bound"] = epsilon_lower_bound(
                m, n, delta=delta, confidence=ATTACK_CONFIDENCE
            )
    if epsilon is not None:
        result["dp_bound"] = {
            "epsilon": epsilon,
            "delta": delta,
            "tpr_at_fpr": {f"{f:g}": float(dp_tpr_bound(np.array([f]), epsilon, delta)[0]) for f in FPR_POINTS},
        }
    return result
