"""Dropout whose masks are a function of each row's own key: one user's randomness, never its neighbours'.

The cohort engine trains many users in one batch. With ordinary dropout, the masks come from one
generator in batch order, so adding a user to a round shifts every later user's masks and changes
their updates: the sum of clipped updates then moves by more than one user's clip, and user-level
DP's sensitivity no longer holds. Inside `per_row_keys(keys)` every `KeyedDropout` (and the
attention dropout of the SASRec blocks, `attention_dropout`) draws row b's mask from a counter-based
hash of (keys[b], the call's position in the forward, the element's index): the same mask whatever
else is in the batch, in a batched forward and under `torch.func.vmap` (where the key is the
vmapped user's scalar) alike. Outside it, dropout is torch's own (centralized training, Opacus).
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# splitmix64's constants (Steele, Lea & Flood 2014) as signed int64; torch's int64 arithmetic wraps.
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB

_state = threading.local()


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, in place on `z` (a tensor of our own): the full-size hash is the
    cost of keyed dropout, and each avoided temporary is one pass less over it."""
    for bits, factor in ((30, _MIX1), (27, _MIX2), (31, None)):
        shifted = z >> bits
        shifted &= (1 << (64 - bits)) - 1  # logical, not arithmetic, shift
        z ^= shifted
        if factor is not None:
            z *= factor
    return z


def _hash(keys: torch.Tensor, shape: torch.Size, salt: int) -> torch.Tensor:
    """64 random bits (int64) per element of `shape`, row b from keys[b]; element j of a row depends
    only on (key, salt, j)."""
    per_row = torch.arange(int(torch.Size(shape[1:]).numel()), dtype=torch.int64).view(shape[1:])
    key = keys.to(torch.int64)
    key = key.view(-1, *([1] * (len(shape) - 1))) if key.dim() == 1 else key
    offset = ((salt + 1) * _GOLDEN + 2**63) % 2**64 - 2**63  # the salt's stream, wrapped to int64
    return _mix(_mix(key + offset) + per_row * _GOLDEN)


def keyed_uniform(keys: torch.Tensor, shape: torch.Size, salt: int) -> torch.Tensor:
    """Uniforms in [0, 1) of `shape`, row b (the first axis) from keys[b]; a 0-dim key (one vmapped
    user) serves every row: the top 53 bits of the hash, as float32."""
    z = _hash(keys, shape, salt)
    return (_shift_right(z, 11).to(torch.float64) * 2.0**-53).to(torch.float32).expand(shape)


def keyed_keep(keys: torch.Tensor, shape: torch.Size, salt: int, p: float) -> torch.Tensor:
    """keyed_uniform(keys, shape, salt) >= p, the same mask, compared on the hash's bits: no float
    tensors on the way (a third of the cost)."""
    threshold = _bits_threshold(p)  # keep <=> the hash, read unsigned, >= threshold
    if threshold >= 1 << 64:
        return torch.zeros(shape, dtype=torch.bool)
    z = _hash(keys, shape, salt)
    z ^= -(2**63)  # unsigned order as signed: flip the top bit
    return (z >= threshold - 2**63).expand(shape)


@functools.lru_cache(maxsize=64)
def _bits_threshold(p: float) -> int:
    """The least 64-bit hash h (unsigned) whose uniform float32((h >> 11) 2^-53) is >= p: found with
    the very conversions `keyed_uniform` makes, so that both give the same mask bit for bit."""

    def kept(top: int) -> bool:
        uniform = (torch.tensor([top], dtype=torch.int64).to(torch.float64) * 2.0**-53).to(torch.float32)
        return bool(uniform >= p)

    low, high = 0, 1 << 53  # kept(high) is read as True: no 53-bit value reaches it
    while low < high:
        mid = (low + high) // 2
        if kept(mid):
            high = mid
        else:
            low = mid + 1
    return low << 11


@contextmanager
def per_row_keys(keys: torch.Tensor):
    """Dropout inside draws each batch row's masks from its key ((B,) int64, or a vmapped scalar)."""
    previous = getattr(_state, "frame", None)
    _state.frame = {"keys": keys, "calls": 0}
    try:
        yield
    finally:
        _state.frame = previous


def _next_salt() -> tuple[torch.Tensor, int] | None:
    frame = getattr(_state, "frame", None)
    if frame is None:
        return None
    frame["calls"] += 1
    return frame["keys"], frame["calls"]


def keyed_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0:
        return x
    keyed = _next_salt()
    if keyed is None:
        return F.dropout(x, p, True)
    keys, salt = keyed
    keep = keyed_keep(keys, x.shape, salt, p)
    return x * keep.to(x.dtype) / (1 - p)


def keyed_active() -> bool:
    return getattr(_state, "frame", None) is not None


class KeyedDropout(nn.Dropout):
    """nn.Dropout (same arguments, no weights), keyed per row inside `per_row_keys`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return keyed_dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float, training: bool):
    """Scaled dot-product attention (B, nh, T, hs) with dropout p on the weights: torch's fused kernel,
    or, inside `per_row_keys` while training, the same computation with keyed dropout."""
    if not (training and p > 0 and keyed_active()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, nh, T, T)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, nh, T, T)
    return keyed_dropout(weights, p, True) @ v  # (B, nh, T, hs)
