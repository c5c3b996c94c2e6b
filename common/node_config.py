"""A node's own settings (Flower's `--node-config`), typed and checked with errors that name the key.

Flower parses `--node-config 'key=value ...'` as TOML values, so a device owner can hand us a
string where a number belongs (`max-epsilon="8"` is fine, `max-epsilon="lots"` is not) or a typo in
a key. Each key is read here, never with a bare `int()` / `bool()` (`bool("false")` is True).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from common.errors import ConfigError

# key -> (type, what it is); the device keys are documented in docs/deployment.md.
DEVICE_KEYS: dict[str, tuple[type, str]] = {
    "data-path": (str, "the device's interactions file"),
    "catalogue-path": (str, "the federation's catalogue.json"),
    "client-id": (int, "the device's integer identity"),
    "state-dir": (str, "the device's state folder (privacy ledger)"),
    "max-epsilon": (float, "the owner's privacy budget"),
    "train": (bool, "whether the device trains"),
    "max-train-seconds": (float, "the owner's time limit per round"),
}
SIMULATION_KEYS: dict[str, tuple[type, str]] = {  # set by Flower's simulation engine
    "partition-id": (int, "the simulated client's partition"),
    "num-partitions": (int, "the simulation's partition count"),
}
KNOWN_KEYS = {**DEVICE_KEYS, **SIMULATION_KEYS}


def node_setting(node_config: dict, key: str, default: Any = None) -> Any:
    """The typed value of `key` (default when absent), or a ConfigError naming the key and what to write."""
    if key not in node_config:
        return default
    kind, what = KNOWN_KEYS[key]
    value = node_config[key]
    example = {int: "17", float: "8.0", bool: "true", str: '"/path"'}[kind]
    bad = ConfigError(
        f"node config key '{key}' ({what}) must be {kind.__name__}, got {value!r}; write e.g. {key}={example} "
        "in --node-config"
    )
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if kind is str:
        if isinstance(value, str) and value.strip():
            return value
        raise bad
    if isinstance(value, bool):
        raise bad
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise bad from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise bad
    if kind is float and not math.isfinite(number):
        raise bad
    if number < 0:
        raise ConfigError(f"node config key '{key}' ({what}) must be >= 0, got {value!r}")
    return number


def check_node_keys(node_config: dict) -> None:
    """Every key known (a typo would silently drop the owner's setting) and every value typed."""
    for key in node_config:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(DEVICE_KEYS)}"
            raise ConfigError(f"node config has unknown key '{key}'; {hint}")
        node_setting(node_config, key)
