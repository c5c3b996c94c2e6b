"""What the final model reveals about the canary users (made by common.data.canaries).

A canary run inserts `canaries` random item sequences as extra users; each is included with
probability 1/2, decided (like the sequences) by the run seed alone, so the audit regenerates
exactly which were trained on. The audit then

- guesses inclusion from the final model's loss on each canary (the k lowest losses IN, the k
  highest OUT, abstain on the rest) and turns the number of correct guesses into a 95%-confidence
  lower bound on epsilon (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023, Theorem 3 with delta / their Algorithm for the bound), and
- computes Carlini et al.'s exposure ("The Secret Sharer", USENIX Security 2019): the rank of
  the canary's likelihood among random candidate sequences, log2(#candidates) - log2(rank).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] for an (epsilon, delta)-DP mechanism, m canaries each in w.p. 1/2:
    P[Bin(r, q) >= v] + 2 m delta max_i P[v - i <= Bin(r, q) < v] / i, q = e^eps / (1 + e^eps)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1 / (1 + math.exp(-epsilon))
    tail = stats.binom.sf(v - 1, r, q)
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)) if v > 0 else np.zeros(0)
    alpha = float(np.max(below / np.arange(1, v + 1))) if v > 0 else 0.0
    return float(min(1.0, tail + 2 * m * delta * alpha))


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon that v correct guesses of r reject at the given confidence (0 when none)."""
    beta = 1 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, high * 2
        if high > 1e3:
            return float("inf")
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < beta else (low, mid)
    return low


def guess_inclusion(scores: np.ndarray, k: int) -> np.ndarray:
    """+1 (IN) for the k highest scores, -1 (OUT) for the k lowest, 0 (abstain) otherwise."""
    k = min(k, len(scores) // 2)
    order = np.argsort(-scores, kind="stable")
    guesses = np.zeros(len(scores), dtype=np.int64)
    guesses[order[:k]] = 1
    guesses[order[len(scores) - k :]] = -1
    return guesses


def audit_canaries(scores: np.ndarray, included: np.ndarray, *, k: int, delta: float) -> dict:
    """scores: higher = more likely trained on (e.g. minus the loss)."""
    guesses = guess_inclusion(scores, k)
    made = guesses != 0
    correct = int(((guesses == 1) & included).sum() + ((guesses == -1) & ~included).sum())
    m, r = len(scores), int(made.sum())
    return {
        "canaries": m,
        "included": int(included.sum()),
        "guesses": r,
        "correct": correct,
        "k_in": int((guesses == 1).sum()),
        "k_out": int((guesses == -1).sum()),
        "delta": delta,
        "epsilon_lower_bound": epsilon_lower_bound(m, r, correct, delta=delta),
        "confidence": 0.95,
    }


def exposure(canary_loss: np.ndarray, candidate_loss: np.ndarray) -> np.ndarray:
    """Per canary: log2(#candidates) - log2(rank), rank = 1 + candidates at least as likely (lower total
    loss) as the canary, among the candidates plus the canary itself."""
    rank = 1 + (candidate_loss[None, :] <= canary_loss[:, None]).sum(1)  # (m,)
    return math.log2(len(candidate_loss) + 1) - np.log2(rank)
