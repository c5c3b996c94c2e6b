"""Every training reply is checked before it can reach the model.

A reply must carry the global model's keys with the same shapes and dtypes, only finite values,
an update (reply - global weights) no longer than `max-update-norm` (when set), and a plausible
example count (a positive integer, at most `max-examples`). A reply that fails is dropped with
its reason in the round log; it is never aggregated. Checked here rather than in the strategy so
that every strategy, DP wrapper and the cohort engine's noisy sum see only valid updates.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message


def reply_problem(
    reply: Message, global_arrays: ArrayRecord, *, max_update_norm: float = 0.0, max_examples: int = 0
) -> str | None:
    """Why `reply` must not be aggregated, or None when it may."""
    content = reply.content
    if "arrays" not in content or "metrics" not in content:
        return "no arrays or no metrics"
    arrays = content["arrays"]
    missing, extra = set(global_arrays.keys()) - set(arrays.keys()), set(arrays.keys()) - set(global_arrays.keys())
    if missing or extra:
        return f"keys differ from the global model (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})"
    squared = 0.0
    for name in global_arrays.keys():
        ours, theirs = global_arrays[name], arrays[name]
        if tuple(theirs.shape) != tuple(ours.shape):
            return f"{name}: shape {tuple(theirs.shape)}, the model's is {tuple(ours.shape)}"
        if theirs.dtype != ours.dtype:
            return f"{name}: dtype {theirs.dtype}, the model's is {ours.dtype}"
        value = theirs.numpy()
        if not np.isfinite(value).all():
            return f"{name}: holds NaN or infinite values"
        if max_update_norm > 0:  # the norm only where it is bounded: ~4 ms a main-job reply otherwise
            squared += float(np.square(value.astype(np.float64) - ours.numpy().astype(np.float64)).sum())
    norm = math.sqrt(squared)
    if max_update_norm > 0 and norm > max_update_norm:
        return f"update norm {norm:.4g} > max-update-norm {max_update_norm:g}"
    examples = content["metrics"].get("num-examples")
    if not isinstance(examples, int) or isinstance(examples, bool) or examples <= 0:
        return f"num-examples {examples!r} is not a positive integer"
    if max_examples and examples > max_examples:
        return f"num-examples {examples} > {max_examples}, more than this client can hold"
    return None
