"""One interface for every epsilon in the project (after Opacus' `accountants/accountant.py`).

An accountant is a small stateful object over pure math: `step(event, count)` books releases,
`get_epsilon(delta)` composes everything booked so far, and `state_dict()` / `load_state_dict()`
make its history plain data that a run saves, resumes and an auditor replays. Implementations
live beside this file and are picked by name from the registry in `__init__`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from common.privacy.accountants.events import Event, check_event, event_from_dict, event_to_dict


class Accountant(ABC):
    name: str = ""
    supported: tuple[type, ...] = ()  # the event classes this method can account

    def __init__(self, history: Iterable[tuple[Event, int]] = ()):
        self.history: list[tuple[Event, int]] = []
        for event, count in history:
            self.step(event, count)

    def step(self, event: Event, count: int = 1) -> None:
        """Book `count` releases of `event`; equal consecutive events are merged (composition is
        order-free, and a merged history keeps replays fast)."""
        check_event(event)
        if not isinstance(event, self.supported):
            names = ", ".join(cls.kind for cls in self.supported)
            raise ValueError(f"the {self.name} accountant cannot account {event.kind} events (it accounts {names})")
        if count <= 0:
            return
        if self.history and self.history[-1][0] == event:
            self.history[-1] = (event, self.history[-1][1] + count)
        else:
            self.history.append((event, count))

    def get_epsilon(self, delta: float) -> float:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if not self.history:
            return 0.0
        if any(event.noise <= 0 for event, _ in self.history):
            return float("inf")  # a release without noise has no guarantee
        adjacencies = {event.adjacency for event, _ in self.history}
        if len(adjacencies) > 1:
            raise ValueError(f"cannot compose events analysed under different adjacencies: {sorted(adjacencies)}")
        return float(self._epsilon(delta))

    @abstractmethod
    def _epsilon(self, delta: float) -> float: ...

    def projected(self, event: Event, count: int = 1) -> Accountant:
        """A copy with `count` more releases of `event` booked (what a release would cost)."""
        copy = type(self)(self.history)
        copy.step(event, count)
        return copy

    def state_dict(self) -> dict:
        return {"accountant": self.name, "history": [[event_to_dict(e), int(c)] for e, c in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("accountant") != self.name:
            raise ValueError(f"a {state.get('accountant')!r} ledger cannot be loaded into the {self.name} accountant")
        self.history = []
        for event, count in state["history"]:
            self.step(event_from_dict(event), int(count))


def smallest_noise(epsilon_of: Callable[[float], float], target_epsilon: float) -> float:
    """Smallest noise multiplier z (to 0.1%) with epsilon_of(z) <= target (epsilon falls as z grows)."""
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon!r}")
    low, high = 0.05, 1.0
    while epsilon_of(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e5:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if epsilon_of(mid) > target_epsilon else (low, mid)
    return high


def calibrate(
    make_accountant: Callable[[], Accountant],
    releases: Callable[[float], Iterable[tuple[Event, int]]],
    *,
    target_epsilon: float,
    delta: float,
) -> float:
    """The smallest z whose planned `releases(z)`, booked on a fresh accountant (which may already
    hold what was spent), stay within `target_epsilon` at `delta`."""

    def epsilon_of(z: float) -> float:
        accountant = make_accountant()
        for event, count in releases(z):
            accountant.step(event, count)
        return accountant.get_epsilon(delta)

    return smallest_noise(epsilon_of, target_epsilon)
