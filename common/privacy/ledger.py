"""A client's DP-SGD privacy ledger: every (noise, sample rate, steps) it ever spent.

Plain data, saved after every round (JSON), so epsilon composes over all rounds the client took
part in and survives restarts. Epsilon is computed from the whole history, never per round, by
Opacus' accountant named in the ledger (RDP or PRV) through `common.privacy.accountants`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PrivacyLedger:
    accountant: str = "rdp"  # "rdp" or "prv" (Opacus)
    history: list[tuple[float, float, int]] = field(default_factory=list)  # (noise multiplier, sample rate, steps)

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            z, q, s = self.history[-1]
            self.history[-1] = (z, q, s + steps)  # same mechanism: merge, as Opacus does
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        from common.privacy.accountants import PoissonGaussian, create_accountant

        steps = [(PoissonGaussian(float(z), float(q)), int(s)) for z, q, s in self.history]
        return create_accountant(f"opacus-{self.accountant}", steps).get_epsilon(delta)

    def projected(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> PrivacyLedger:
        copy = PrivacyLedger(self.accountant, list(self.history))
        copy.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return copy

    def state_dict(self) -> dict:
        return {"accountant": self.accountant, "history": [list(entry) for entry in self.history]}

    @classmethod
    def from_state_dict(cls, state: dict) -> PrivacyLedger:
        return cls(state["accountant"], [(float(z), float(q), int(s)) for z, q, s in state["history"]])

    def save(self, path: Path) -> None:
        """Durably, before the reply that spent it leaves: temp file, fsync, rename, folder fsync. A
        device killed (or a power cut) at any moment keeps the old ledger or the new one, whole."""
        from common.atomic_files import atomic_write

        text = json.dumps(self.state_dict()).encode()
        atomic_write(Path(path), lambda handle: handle.write(text))

    @classmethod
    def load(cls, path: Path, accountant: str) -> PrivacyLedger:
        path = Path(path)
        if not path.exists():
            return cls(accountant)
        ledger = cls.from_state_dict(json.loads(path.read_text()))
        if ledger.accountant != accountant:
            raise ValueError(
                f"{path}: ledger kept with the {ledger.accountant} accountant, run asks for "
                f"{accountant}; keep one accountant per client for its whole life"
            )
        return ledger
