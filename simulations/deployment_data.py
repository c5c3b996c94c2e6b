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


def write_node_files(config: RunConfig, out: Path, nodes: int) -> list[Path]:
    data = load_sequence_data(config.data)
    if not 1 <= nodes <= data.num_users:
        raise ValueError(f"--nodes must be between 1 and {data.num_users}")
    out.mkdir(parents=True, exist_ok=True)
    catalogue = out / "catalogue.json"
    catalogue.write_text(json.dumps(data.item_ids.tolist()))
    written = [catalogue]
    users = np.random.default_rng(config.train.seed).permutation(data.num_users)
    for node, part in enumerate(np.array_split(users, nodes)):
        rows = [
            (int(data.user_ids[u]), int(data.item_ids[item]), position)
            for u in np.sort(part)
            for position, item in enumerate(data.sequence(u))
        ]
        path = out / f"node-{node}.csv"
        pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
        written.append(path)
    return written
