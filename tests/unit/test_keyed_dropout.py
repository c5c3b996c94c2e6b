"""Keyed dropout's masks: the integer comparison gives the float one's mask bit for bit, and the
in-place hash gives the values of splitmix64 written out plainly (issue 32: the masks stay the
ones every earlier run drew)."""

from __future__ import annotations

import pytest
import torch

from common.model import keyed_dropout as kd

GOLDEN, MIX1, MIX2 = kd._GOLDEN, kd._MIX1, kd._MIX2


def _plain_uniform(keys: torch.Tensor, shape: torch.Size, salt: int) -> torch.Tensor:
    """The formula as first written: no in-place step, floats compared."""

    def shift(z, bits):
        return (z >> bits) & ((1 << (64 - bits)) - 1)

    def mix(z):
        z = (z ^ shift(z, 30)) * MIX1
        z = (z ^ shift(z, 27)) * MIX2
        return z ^ shift(z, 31)

    per_row = torch.arange(int(torch.Size(shape[1:]).numel()), dtype=torch.int64).view(shape[1:])
    key = keys.to(torch.int64).view(-1, *([1] * (len(shape) - 1)))
    offset = ((salt + 1) * GOLDEN + 2**63) % 2**64 - 2**63
    z = mix(mix(key + offset) + per_row * GOLDEN)
    return (shift(z, 11).to(torch.float64) * 2.0**-53).to(torch.float32).expand(shape)


@pytest.mark.parametrize("shape", [(7, 5, 3), (4, 2, 6, 6)])
def test_the_bits_give_the_float_mask_and_the_plain_hash(shape):
    generator = torch.Generator().manual_seed(0)
    keys = torch.randint(-(2**62), 2**62, (shape[0],), generator=generator)
    keys[0] = 0
    shape = torch.Size(shape)
    for salt in (1, 2, 9):
        uniform = kd.keyed_uniform(keys, shape, salt)
        assert torch.equal(uniform, _plain_uniform(keys, shape, salt))
        for p in (0.0, 0.1, 0.2, 1 / 3, 0.5, 0.9, 0.999999, 1.0):
            assert torch.equal(kd.keyed_keep(keys, shape, salt, p), uniform >= p), (salt, p)


def test_a_vmapped_users_mask_is_its_rows_of_the_batch():
    # Batched, each of a user's windows is a row with the user's key; under vmap the key is the
    # user's scalar and its windows are the rows.
    keys, windows, shape = torch.tensor([3, -5, 2**40]), 2, torch.Size((8, 4))
    batched = kd.keyed_keep(keys.repeat_interleave(windows), torch.Size((3 * windows, *shape)), 2, 0.2)
    one_by_one = torch.func.vmap(lambda key: kd.keyed_keep(key, torch.Size((windows, *shape)), 2, 0.2))(keys)
    assert torch.equal(one_by_one.reshape(batched.shape), batched)
    uniforms = torch.func.vmap(lambda key: kd.keyed_uniform(key, (windows, *shape), 2))(keys)
    assert torch.equal(one_by_one, uniforms >= 0.2)
