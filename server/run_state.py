"""Everything a federation needs to resume after a kill, saved atomically every round."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import atomic_torch_save
from common.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
# Keys that may change between a run and its resumption without changing its results.
_RESUMABLE_KEYS = {"num-server-rounds", "out-dir"}


def config_fingerprint(flat: dict) -> str:
    kept = {k: v for k, v in flat.items() if k not in _RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunState:
    fingerprint: str
    round: int  # last completed round (0 = nothing trained yet)
    arrays: dict[str, torch.Tensor]  # global weights after `round`
    strategy: dict[str, Any] = field(default_factory=dict)  # server-optimiser state
    history: list[dict] = field(default_factory=list)  # one row per completed round
    best: dict[str, Any] = field(default_factory=dict)  # {"round", "metric", "arrays"} by validation
    privacy: dict[str, Any] = field(default_factory=dict)  # privacy tracker state (epsilon per round)
    stopped_early: str = ""  # why the run ended before num-server-rounds, if it did
    torch_rng: torch.Tensor | None = None

    def save(self, run_dir: Path) -> None:
        self.torch_rng = torch.get_rng_state()
        atomic_torch_save(self.__dict__, Path(run_dir) / CHECKPOINT)

    @classmethod
    def load(cls, run_dir: Path, fingerprint: str) -> RunState | None:
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{path} was written by a run with a different configuration; resume with the "
                "same run config, or choose a new out-dir"
            )
        state = cls(**blob)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        return state
