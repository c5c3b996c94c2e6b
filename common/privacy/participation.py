"""When a device may take part in a DP-FTRL run: once per tree, in at most `cap` trees.

DP-FTRL's guarantee does not rest on random sampling, so its schedule need not be secret; it
rests on how often and where one user's update can enter the trees. Rounds are cut into trees of
`rounds_per_tree` rounds (about users / clients-per-round: a tree is one pass over the users),
and a user's round inside tree e is a hash of (run seed, user, e) alone, so it does not move
when other users join or leave. A device computes its own slot and refuses any other round, so
a server that asks more often gets nothing more: within one run a user enters at most one leaf
per tree and at most `cap` trees, the bound the accountant charges.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def rounds_per_tree(users: int, per_round: int) -> int:
    return max(1, math.ceil(users / max(1, per_round)))


def ftrl_schedule(users: int, per_round: int, rounds: int, max_participations: int) -> tuple[int, int]:
    """(rounds per tree, trees a user may join) of a run; max_participations 0 = every tree of the run."""
    rounds_in_tree = rounds_per_tree(users, per_round)
    return rounds_in_tree, trees_cap(rounds_in_tree, rounds, max_participations)


def trees_cap(rounds_in_tree: int, rounds: int, max_participations: int) -> int:
    """Trees a user may join: max_participations, or (0) every tree of a run of `rounds` rounds."""
    passes = math.ceil(rounds / rounds_in_tree)
    return min(max_participations or passes, passes)


def slot(seed: int, user: int, tree: int, rounds_in_tree: int) -> int:
    """The user's round within tree `tree` (0-based)."""
    digest = hashlib.blake2b(f"dp-ftrl:{seed}:{user}:{tree}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % rounds_in_tree


def tree_of(server_round: int, rounds_in_tree: int) -> tuple[int, int]:
    """(tree index, 0-based position in the tree) of a 1-based server round."""
    return (server_round - 1) // rounds_in_tree, (server_round - 1) % rounds_in_tree


def may_participate(seed: int, user: int, server_round: int, rounds_in_tree: int, cap: int) -> bool:
    """A device's own check: is this round its one slot of a tree within its participation cap?"""
    tree, position = tree_of(server_round, rounds_in_tree)
    return tree < cap and slot(seed, user, tree, rounds_in_tree) == position


def scheduled(seed: int, users: np.ndarray, server_round: int, rounds_in_tree: int, cap: int) -> np.ndarray:
    """The users whose slot is this round (sorted), or none once the cap's trees are over."""
    return np.array(
        [u for u in np.sort(users) if may_participate(seed, int(u), server_round, rounds_in_tree, cap)], dtype=np.int64
    )
