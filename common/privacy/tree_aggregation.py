"""Tree aggregation (Dwork et al. 2010; Honaker 2015), the noise behind DP-FTRL (Kairouz et al. 2021).

DP-FTRL releases noisy *prefix sums* of the rounds' clipped update sums, x_1 + ... + x_t, instead
of noisy per-round sums. A binary tree over rounds 1..T holds one Gaussian draw per node; node
(level l, index i) covers rounds i*2^l + 1 .. (i+1)*2^l. The prefix [1, t] is the disjoint union
of one node per set bit of t, so its noise is the sum of popcount(t) <= depth node draws, and one
round's leaf lies under at most depth = ceil(log2(T + 1)) nodes: a user who contributes to one
round of the tree changes at most `depth` node sums, each by at most its clipped norm C. That is
the sensitivity the accountant (`common.privacy.server_accounting.dpftrl_epsilon`) charges.

Every node's draw is made once and reused each time the node is part of a prefix; a node leaves
the cache when no later prefix can use it (nodes are aligned blocks, so that is final).
"""

from __future__ import annotations

import math

import numpy as np


def tree_depth(rounds: int) -> int:
    """Nodes on the path from one leaf to the root of a tree over `rounds` leaves (the accountant's)."""
    return math.ceil(math.log2(rounds + 1))


def prefix_nodes(t: int) -> list[tuple[int, int]]:
    """The nodes (level, index) whose blocks tile rounds 1..t, largest first."""
    if t < 0:
        raise ValueError(f"prefix length must be >= 0, got {t}")
    nodes, covered = [], 0
    for level in reversed(range(t.bit_length())):
        if t >> level & 1:
            nodes.append((level, covered >> level))
            covered += 1 << level
    return nodes


def nodes_above(leaf: int, rounds: int) -> list[tuple[int, int]]:
    """The nodes of a tree over `rounds` leaves whose blocks contain round `leaf` (1-based)."""
    return [
        (level, (leaf - 1) >> level) for level in range(tree_depth(rounds)) if ((leaf - 1) >> level) << level < rounds
    ]


class TreeNoise:
    """Noise of the prefix sums of one tree: N(0, std^2) per node, shaped like `shapes`."""

    def __init__(self, shapes: list[tuple[int, ...]], std: float, rng: np.random.Generator):
        self.shapes, self.std, self.rng = shapes, std, rng
        self.nodes: dict[tuple[int, int], list[np.ndarray]] = {}
        self.drawn = 0  # node draws made (each node once)

    def _node(self, node: tuple[int, int]) -> list[np.ndarray]:
        if node not in self.nodes:
            self.nodes[node] = [self.rng.normal(0.0, self.std, shape) for shape in self.shapes]
            self.drawn += 1
        return self.nodes[node]

    def prefix(self, t: int) -> list[np.ndarray]:
        """The noise on the prefix sum of rounds 1..t of this tree."""
        wanted = prefix_nodes(t)
        total = [np.zeros(shape) for shape in self.shapes]
        for node in wanted:
            for acc, draw in zip(total, self._node(node)):
                acc += draw
        for node in list(self.nodes):  # a block that is not part of prefix t is never part of a later one
            if node not in wanted:
                del self.nodes[node]
        return total
