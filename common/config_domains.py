"""The outer domain of every numeric run-config key, declared once, checked before anything else.

Each group's `validate()` states what a key means (dropout in [0, 1), num-heads divides emb-dim);
this table is the envelope around all of them: the range outside which a value can only be a typo
or a fuzzer's (a seed numpy refuses, 2**62 rounds, a learning rate of 1e300). Every int and float
key has an entry (tests/unit/test_config_domains.py checks it), so a key added later cannot be
left unbounded. `check_domains` also refuses settings that are valid alone but collide: one column
named for two roles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.errors import ConfigError

_COUNT = 10**7  # users, items, rounds, partitions: far above any run this code can hold in memory
_BIG = 10**12  # populations a guarantee is stated for
_RATE = 1e6  # learning rates, norms, noise multipliers: finite, and far above any useful value
_SECONDS = 10.0**8  # about three years

DOMAINS: dict[str, tuple[float, float]] = {
    # data
    "min-item-count": (1, _COUNT),
    "min-user-count": (3, _COUNT),
    "max-len": (2, 10**6),
    "synthetic-users": (2, 10**6),
    "synthetic-items": (10, 10**6),
    # model
    "emb-dim": (1, 16_384),
    "item-rank": (0, 16_384),
    "hidden-dim": (1, 16_384),
    "num-layers": (1, 64),
    "num-heads": (1, 16_384),
    "dropout": (0.0, 1.0),
    "num-negatives": (1, _COUNT),
    # train
    "epochs": (1, 10**6),
    "batch-size": (1, 10**6),
    "lr": (0.0, 10.0),
    "lr-warmup-epochs": (0, 10**6),
    "weight-decay": (0.0, _RATE),
    "patience": (0, 10**6),
    "eval-every": (1, 10**6),
    "seed": (0, 2**32 - 1),  # numpy's and torch's seed range
    "top-k": (1, _COUNT),
    "eval-batch-size": (1, 10**6),
    "num-threads": (0, 4096),
    "augment-prob": (0.0, 1.0),
    "augment-crop-keep": (0.0, 1.0),
    "augment-mask-rate": (0.0, 1.0),
    "augment-reorder-rate": (0.0, 1.0),
    "augment-substitute-rate": (0.0, 1.0),
    "rerank-lambda": (0.0, 1.0),
    "rerank-candidates": (1, _COUNT),
    "activity-groups": (1, 1000),
    # federation
    "num-server-rounds": (1, 10**7),
    "num-partitions": (1, _COUNT),
    "dirichlet-alpha": (0.0, _RATE),
    "clients-per-round": (1, _COUNT),
    "local-epochs": (1, 10**6),
    "local-lr": (0.0, _RATE),
    "server-lr": (0.0, _RATE),
    "server-tau": (0.0, _RATE),
    "proximal-mu": (0.0, _RATE),
    "eval-every-rounds": (1, 10**7),
    "eval-users": (0, _COUNT),
    "holdout-fraction": (0.0, 1.0),
    "public-fraction": (0.0, 1.0),
    "pretrain-epochs": (0, 10**6),
    "pretrain-lr": (0.0, 10.0),
    "pretrain-batch-size": (1, 10**6),
    "population-floor": (0, _BIG),
    "checkpoint-every": (0, 10**7),
    "canaries": (0, _COUNT),
    "canary-length": (1, 10**6),
    "cohort-nodes": (1, 4096),
    "cohort-chunk": (1, 10**6),
    "user-trim-beta": (0.0, 1.0),
    "server-lr-warmup": (0, 10**7),
    "max-update-norm": (0.0, _RATE),
    "max-row-norm": (0.0, _RATE),
    "max-reply-examples": (0, _COUNT),
    "min-replies": (0, _COUNT),
    "round-retries": (0, 10**4),
    "retry-wait": (0.0, _SECONDS),
    "round-deadline": (0.0, _SECONDS),
    "trim-beta": (0.0, 1.0),
    "assumed-malicious": (0, _COUNT),
    "multikrum-select": (0, _COUNT),
    "secagg-shares": (0.0, 1.0),
    "secagg-threshold": (0.0, 1.0),
    "secagg-clip-range": (0.0, _RATE),
    "sim-dropout": (0.0, 1.0),
    "sim-attackers": (0.0, 1.0),
    "sim-attack-scale": (0.0, _RATE),
    "sim-target-item": (0, 2**63 - 1),  # an original item ID
    # privacy
    "noise-multiplier": (0.0, _RATE),
    "target-epsilon": (0.0, _RATE),
    "max-grad-norm": (0.0, _RATE),
    "clipping-norm": (0.0, _RATE),
    "delta": (0.0, 1.0),
    "max-epsilon": (0.0, _RATE),
    "dp-reference-samples": (0, _COUNT),
    "max-participations": (0, 10**7),
    "clip-quantile": (0.0, 1.0),
    "clip-lr": (0.0, _RATE),
    "clip-count-stddev": (0.0, _RATE),
    "simulated-population": (0, _BIG),
}

_COLUMNS = ("user-col", "item-col", "time-col")


def _fmt(number: float) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


def check_domains(values: Mapping[str, Any], where: str) -> None:
    """ConfigError for the first numeric key outside its domain, or columns named for two roles.
    `values`: flat keys already coerced to their types (keys absent take their in-domain defaults)."""
    for key, value in values.items():
        domain = DOMAINS.get(key)
        if domain is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = domain
        if not low <= value <= high:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            shown = shown if len(shown) <= 20 else shown[:16] + "..."
            raise ConfigError(f"{where}: config key '{key}': must be in [{_fmt(low)}, {_fmt(high)}], got {shown}")
    columns = {key: values[key] for key in _COLUMNS if key in values}
    if columns:
        defaults = {"user-col": "user_id", "item-col": "item_id", "time-col": "timestamp"}
        named = {key: columns.get(key, defaults[key]) for key in _COLUMNS}
        for key in _COLUMNS:
            others = [k for k in _COLUMNS if k != key and named[k] == named[key]]
            if others:
                raise ConfigError(
                    f"{where}: {key} and {others[0]} both name column '{named[key][:40]}'; "
                    "each role needs its own column"
                )
