"""What one release of a DP mechanism is, as an accountant must see it: plain, saveable data.

Every event's `noise` is the accountant's noise multiplier: the noise standard deviation over the
L2 sensitivity of what was noised under the event's adjacency (`common.privacy.mechanism` turns a
run's z = std / C into it). The sampling is part of the event, because amplification by sampling
is where most of a federated epsilon comes from, and each kind is analysed under its own adjacency:
- `Gaussian`: no sampling (everyone's contribution in every release);
- `PoissonGaussian`: each unit independently with probability `rate` (add/remove one unit);
- `FixedSizeGaussian`: `sampled` of `population` uniformly without replacement (replace-one);
- `TreeGaussian`: tree aggregation over one pass whose trees ran `tree_lengths` rounds, each unit in
  at most one round of the pass (replace-with-zero; Kairouz et al. 2021, appendix D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from common.privacy.mechanism import ADD_OR_REMOVE_ONE, REPLACE_ONE, REPLACE_WITH_ZERO


@dataclass(frozen=True)
class Gaussian:
    noise: float
    kind = "gaussian"
    adjacency = ADD_OR_REMOVE_ONE


@dataclass(frozen=True)
class PoissonGaussian:
    noise: float
    rate: float
    kind = "poisson-gaussian"
    adjacency = ADD_OR_REMOVE_ONE


@dataclass(frozen=True)
class FixedSizeGaussian:
    noise: float
    sampled: int
    population: int
    kind = "fixed-size-gaussian"
    adjacency = REPLACE_ONE

    @property
    def rate(self) -> float:
        return self.sampled / self.population


@dataclass(frozen=True)
class TreeGaussian:
    noise: float
    tree_lengths: tuple[int, ...]
    kind = "tree-gaussian"
    adjacency = REPLACE_WITH_ZERO


Event = Gaussian | PoissonGaussian | FixedSizeGaussian | TreeGaussian
KINDS = {cls.kind: cls for cls in (Gaussian, PoissonGaussian, FixedSizeGaussian, TreeGaussian)}


def check_event(event: Event) -> Event:
    """The event, or a ValueError that says which of its numbers cannot be accounted."""
    if not event.noise >= 0:
        raise ValueError(f"{event.kind}: noise multiplier must be >= 0, got {event.noise!r}")
    if isinstance(event, PoissonGaussian) and not 0 < event.rate <= 1:
        raise ValueError(f"{event.kind}: sampling rate must be in (0, 1], got {event.rate!r}")
    if isinstance(event, FixedSizeGaussian) and not 1 <= event.sampled <= event.population:
        raise ValueError(f"{event.kind}: need 1 <= sampled <= population, got {event.sampled} of {event.population}")
    if isinstance(event, TreeGaussian) and (not event.tree_lengths or min(event.tree_lengths) < 1):
        raise ValueError(f"{event.kind}: tree lengths must be >= 1 rounds, got {list(event.tree_lengths)}")
    return event


def event_to_dict(event: Event) -> dict:
    out = {"kind": event.kind, **asdict(event)}
    if isinstance(event, TreeGaussian):
        out["tree_lengths"] = list(event.tree_lengths)
    return out


def event_from_dict(data: dict) -> Event:
    fields = {k: v for k, v in data.items() if k != "kind"}
    cls = KINDS.get(data.get("kind"))
    if cls is None:
        raise ValueError(f"unknown DP event kind {data.get('kind')!r}; expected one of {', '.join(KINDS)}")
    if cls is TreeGaussian:
        fields["tree_lengths"] = tuple(int(n) for n in fields["tree_lengths"])
    if cls is FixedSizeGaussian:
        fields["sampled"], fields["population"] = int(fields["sampled"]), int(fields["population"])
    return check_event(cls(**fields))
