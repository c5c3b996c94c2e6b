"""Everything a federation needs to resume after a kill, saved atomically every round."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.errors import CheckpointError, ConfigError
from common.model.checkpoint import atomic_torch_save, read_torch_file

CHECKPOINT = "checkpoint.pt"
# Keys that may change between a run and its resumption without changing its results. Where an input
# file lives is one of them: what it holds is checked against the run's inputs.json (common/data/run_inputs.py).
_RESUMABLE_KEYS = {"num-server-rounds", "out-dir", "data-dir", "users-file", "item-metadata", "init-model"}


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
        """Atomically replace the checkpoint. When it cannot be written (a full disk, a folder gone
        read-only) the previous checkpoint stays whole and a CheckpointError stops the run: a run
        that goes on without checkpoints could not resume what it did after this round."""
        self.torch_rng = torch.get_rng_state()
        path = Path(run_dir) / CHECKPOINT
        try:
            atomic_torch_save(self.__dict__, path)
        except OSError as exc:
            raise CheckpointError(
                f"{path}: cannot save round {self.round} ({exc.strerror or exc}); the run stops here and "
                f"the previous checkpoint is kept: free space (or fix the folder) and run the same command "
                "again to resume from it"
            ) from exc

    @classmethod
    def load(cls, run_dir: Path, fingerprint: str) -> RunState | None:
        path = Path(run_dir) / CHECKPOINT
        for leftover in Path(run_dir).glob(f".{CHECKPOINT}.tmp*"):  # a write cut short by a kill: never whole
            leftover.unlink(missing_ok=True)
        if not path.exists():
            return None
        todo = "move it away to start over, or choose a new out-dir"
        blob = read_torch_file(path, "checkpoint", todo)
        if "fingerprint" not in blob or "round" not in blob:
            raise CheckpointError(f"{path}: not a fedseqrec run checkpoint; {todo}")
        if blob["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{path} was written by a run with a different configuration; resume with the "
                "same run config, or choose a new out-dir"
            )
        state = cls(**blob)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
        return state
