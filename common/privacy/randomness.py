"""Where the randomness that a DP guarantee rests on comes from.

Client-side DP protects a user from the server; server-side DP protects users from whoever sees
the released model. Noise and sampling must therefore be secret from that adversary: by default
they are drawn from the operating system's entropy, fresh for every round, never from anything
the server or the run config knows. `reproducible-dp-noise = true` (simulations only) derives
them from the run seed instead, so that a simulated run replays bit for bit; a guarantee of such
a run does not hold against anyone who knows the seed, and every report says so.
"""

from __future__ import annotations

import secrets

import numpy as np

SECRET = "secret"
REPRODUCIBLE = "reproducible"

DESCRIPTION = {
    SECRET: "secret: drawn from the operating system's entropy, fresh each round; neither the server nor "
    "the run config can reproduce it",
    REPRODUCIBLE: "REPRODUCIBLE (reproducible-dp-noise = true, simulation only): derived from the run seed; "
    "the guarantee does NOT hold against anyone who knows the seed",
}


def dp_seed(*, reproducible: bool, derived: int) -> int:
    """A 63-bit seed for DP noise / sampling: `derived` only when reproducibility was asked for."""
    return int(derived) if reproducible else secrets.randbits(63)


def seed_numpy_global(*, reproducible: bool, derived: int) -> None:
    """Seed numpy's global RNG, which Flower's DP wrappers draw their noise from."""
    if reproducible:
        np.random.seed(int(derived) % 2**32)
    else:  # 256 bits of OS entropy into the Mersenne Twister's full-state initialisation
        np.random.seed(np.frombuffer(secrets.token_bytes(32), dtype=np.uint32))


def secret_rng() -> np.random.Generator:
    """A numpy generator seeded with 128 bits of OS entropy (e.g. for a secret client sample)."""
    return np.random.default_rng(secrets.randbits(128))
