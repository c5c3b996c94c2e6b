"""Per-node data files for a real (loopback or device) deployment.

Each SuperNode gets `node-<i>.csv` (its users' interactions with original IDs, the seed format)
and everyone shares `catalogue.json` (the federation's item list in model index order). The item
catalogue is public information; user histories stay in their node's file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.errors import ConfigError
from common.outputs import check_output_dir, staged_output


def write_node_files(config: RunConfig, out: Path, nodes: int) -> list[Path]:
    """Write every node's file and the catalogue, all or nothing (a failure leaves `out` as it was)."""
    check_output_dir(out, "--out")  # before the data is read
    data = load_sequence_data(config.data)
    if not 1 <= nodes <= data.num_users:
        raise ConfigError(
            f"--nodes {nodes}: {config.data.data} has {data.num_users} users after preprocessing; "
            f"pass --nodes between 1 and {data.num_users} (each node needs at least one user)"
        )
    names = ["catalogue.json"] + [f"node-{node}.csv" for node in range(nodes)]
    users = np.random.default_rng(config.train.seed).permutation(data.num_users)
    with staged_output(out, "--out") as stage:
        (stage / "catalogue.json").write_text(json.dumps(data.item_ids.tolist()))
        for node, part in enumerate(np.array_split(users, nodes)):
            rows = [
                (int(data.user_ids[u]), int(data.item_ids[item]), position)
                for u in np.sort(part)
                for position, item in enumerate(data.sequence(u))
            ]
            pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(stage / names[node + 1], index=False)
    return [out / name for name in names]
