"""The plain SGD and Adam of a device's local training (common/training/optimizers.py) step for step
equal torch.optim's on the CPU, bit for bit, and leave torch._dynamo unimported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.training.optimizers import plain_optimizer

ROOT = Path(__file__).resolve().parents[2]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(30, 8), torch.nn.Flatten(), torch.nn.Linear(24, 30))


def _train(model: torch.nn.Module, optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 30, (16, 3), generator=generator)
        y = torch.randint(0, 30, (16,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_each_step_is_torch_optims_bit_for_bit(name, weight_decay):
    ours, theirs = _model(0), _model(0)
    reference = (torch.optim.Adam if name == "adam" else torch.optim.SGD)(
        theirs.parameters(), lr=0.05, weight_decay=weight_decay
    )
    _train(ours, plain_optimizer(name, ours.parameters(), lr=0.05, weight_decay=weight_decay), 25)
    _train(theirs, reference, 25)
    moved = 0
    for (key, a), b, start in zip(
        ours.state_dict().items(), theirs.state_dict().values(), _model(0).state_dict().values()
    ):
        assert torch.equal(a, b), key
        moved += not torch.equal(a, start)
    assert moved == 3  # every tensor trained: the equality is not start == start


def test_a_parameter_without_a_gradient_is_left_alone():
    model = _model(0)
    frozen = model[2].bias.detach().clone()
    optimizer = plain_optimizer("adam", model.parameters(), lr=0.1)
    model(torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    model[2].bias.grad = None
    optimizer.step()
    assert torch.equal(model[2].bias, frozen)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="'rmsprop' is not one of adam, sgd"):
        plain_optimizer("rmsprop", _model(0).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must be >= 0"):
        plain_optimizer("sgd", _model(0).parameters(), lr=-1.0)


def test_training_with_them_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from common.training.optimizers import plain_optimizer\n"
        "m = torch.nn.Linear(3, 2)\n"
        "o = plain_optimizer('adam', m.parameters(), lr=0.1)\n"
        "m(torch.ones(1, 3)).sum().backward(); o.step(); o.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_cross_silo_training_message_does_not_import_torch_dynamo():
    """What the module is for: a ClientApp process that trains one message (`client.handlers`)."""
    code = (
        "import sys\n"
        "from client import handlers\n"
        "from tests.unit.test_client_threads import BASE, _ask\n"
        "msg, context = _ask('train', {**BASE, 'num-threads': 1})\n"
        "assert not handlers.train(msg, context).has_error()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
