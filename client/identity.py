"""Who a client is: its identity and whether it is a simulated device. Light on purpose: a
ClientApp process answers the server's identification query with only this (no torch, no data stack)."""

from __future__ import annotations

from common.errors import DataError
from common.node_config import node_setting


def client_key(node_config: dict) -> int:
    """Stable identity of a client: its partition in simulation, its `client-id` on a device."""
    for key in ("partition-id", "client-id"):
        if key in node_config:
            return node_setting(node_config, key)
    raise DataError(
        "node config has neither partition-id (simulation) nor client-id (deployment); "
        "a device sets client-id=N, its unique integer identity in the federation"
    )


def is_simulated(node_config: dict) -> bool:
    """A simulated device (a partition of the run's dataset), as opposed to a real one with its own data."""
    return "partition-id" in node_config and "data-path" not in node_config and "state-dir" not in node_config
