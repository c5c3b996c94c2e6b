"""A device's own guard for DP-FTRL: it trains only in its slot of a tree, in at most `cap` trees.

The bound the accountant charges (one leaf per tree, at most max-participations trees) is kept
by the device, not the server: a device computes its slot from (run seed, its key, tree) and
declines every other round. A simulated host knows the population and so the tree length; a real
device takes the tree length from the server, which cannot raise its participations that way:
one slot per tree and at most `cap` trees hold for any tree length.
"""

from __future__ import annotations

import numpy as np

from client.identity import client_key, is_simulated
from common.config import RunConfig
from common.data.partition import cached_partitioning
from common.privacy import participation


def ftrl_own_slots(
    config: RunConfig, node_config: dict, round_config, chunks: list[tuple[int, np.ndarray]], server_round: int
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """`chunks` without the users for whom this round is not their slot, and how many were refused."""
    fed = config.federation
    if is_simulated(node_config):
        users = cached_partitioning(config.data, config.federation, config.train.seed).num_clients
        rounds_in_tree, cap = participation.ftrl_schedule(
            users, fed.clients_per_round, fed.num_server_rounds, config.privacy.max_participations
        )
        keys = [int(k) for k in round_config["chunk-keys"]] if "chunk-keys" in round_config else []
    else:
        rounds_in_tree = int(round_config.get("rounds-in-tree", 1))
        cap = participation.trees_cap(rounds_in_tree, fed.num_server_rounds, config.privacy.max_participations)
        keys = None
    kept, refused, start = [], 0, 0
    for index, rows in chunks:
        chunk_keys = keys[start : start + len(rows)] if keys is not None else [client_key(node_config)] * len(rows)
        start += len(rows)
        allowed = np.array(
            [
                participation.may_participate(config.train.seed, k, server_round, rounds_in_tree, cap)
                for k in chunk_keys
            ],
            dtype=bool,
        )
        refused += int((~allowed).sum())
        kept.append((index, rows[allowed]))
    return kept, refused
