"""One accountant interface: implementations agree where they should, and the registry names them."""

from __future__ import annotations

import math

import pytest

from common.privacy.accountants import (
    ACCOUNTANTS,
    FixedSizeGaussian,
    Gaussian,
    PoissonGaussian,
    TreeGaussian,
    accountant_from_state,
    calibrate,
    create_accountant,
)
from common.privacy.accountants.independent import released_depth
from common.privacy.tree_aggregation import tree_depth
from tests.conftest import gaussian_rdp_epsilon

POISSON = PoissonGaussian(1.289, 1000 / 6040)  # the shipped user-level recipe: 120 rounds at epsilon 8


def test_the_registry_holds_every_method_the_project_uses():
    assert set(ACCOUNTANTS) == {"rdp", "pld", "opacus-rdp", "opacus-prv", "independent-rdp"}
    with pytest.raises(ValueError, match="unknown accountant"):
        create_accountant("moments")


def test_the_shipped_recipe_costs_what_each_method_says():
    """rdp and the independent closed form agree to the digit; PLD and PRV are tighter; Opacus' RDP
    (other orders) within 1%."""
    eps = {name: create_accountant(name, [(POISSON, 120)]).get_epsilon(1 / 6040) for name in ACCOUNTANTS}
    assert eps["rdp"] == pytest.approx(8.0, abs=0.01)
    assert eps["independent-rdp"] == pytest.approx(eps["rdp"], rel=1e-6)
    assert eps["opacus-rdp"] == pytest.approx(eps["rdp"], rel=0.01)
    assert eps["pld"] < 0.92 * eps["rdp"] and eps["opacus-prv"] == pytest.approx(eps["pld"], rel=0.01)


def test_without_sampling_every_method_is_the_gaussian_oracle():
    oracle = gaussian_rdp_epsilon(2.0, 10, 1e-5)
    for name in ("rdp", "independent-rdp"):
        assert create_accountant(name, [(Gaussian(2.0), 10)]).get_epsilon(1e-5) == pytest.approx(oracle, rel=1e-3)
    assert create_accountant("pld", [(Gaussian(2.0), 10)]).get_epsilon(1e-5) < oracle


@pytest.mark.parametrize(
    "event", [FixedSizeGaussian(0.5, 200, 5538), TreeGaussian(5.0, (7,)), TreeGaussian(3.0, (8, 3))]
)
def test_the_independent_rdp_matches_dp_accounting_on_fixed_size_sampling_and_trees(event):
    runs = {name: create_accountant(name, [(event, 4)]).get_epsilon(1e-5) for name in ("rdp", "independent-rdp")}
    assert runs["independent-rdp"] == pytest.approx(runs["rdp"], rel=1e-3)


def test_the_independent_tree_depth_is_the_accountants_depth():
    for rounds in range(1, 70):
        assert released_depth(rounds) == tree_depth(rounds)


def test_equal_steps_merge_and_the_state_round_trips():
    accountant = create_accountant("rdp")
    accountant.step(POISSON, 3)
    accountant.step(POISSON, 2)
    accountant.step(PoissonGaussian(2.0, 0.1))
    assert accountant.history == [(POISSON, 5), (PoissonGaussian(2.0, 0.1), 1)]
    again = accountant_from_state(accountant.state_dict())
    assert again.history == accountant.history and again.get_epsilon(1e-5) == accountant.get_epsilon(1e-5)


def test_events_a_method_cannot_account_and_mixed_adjacencies_are_refused():
    with pytest.raises(ValueError, match="cannot account fixed-size"):
        create_accountant("pld").step(FixedSizeGaussian(1.0, 10, 100))
    mixed = create_accountant("rdp", [(POISSON, 1), (FixedSizeGaussian(1.0, 10, 100), 1)])
    with pytest.raises(ValueError, match="adjacencies"):
        mixed.get_epsilon(1e-5)
    with pytest.raises(ValueError, match="sampling rate"):
        create_accountant("rdp").step(PoissonGaussian(1.0, 1.5))
    assert math.isinf(create_accountant("rdp", [(Gaussian(0.0), 1)]).get_epsilon(1e-5))


def test_calibration_lands_on_the_target_from_above_and_counts_what_was_spent():
    def plan(z):
        return [(PoissonGaussian(z, 0.1), 50)]

    z = calibrate(lambda: create_accountant("rdp"), plan, target_epsilon=2.0, delta=1e-5)
    assert 1.99 <= create_accountant("rdp", plan(z)).get_epsilon(1e-5) <= 2.0
    spent = create_accountant("rdp", [(PoissonGaussian(2.0, 0.1), 50)])
    assert spent.get_epsilon(1e-5) < 2.0
    more = calibrate(lambda: create_accountant("rdp", spent.history), plan, target_epsilon=4.0, delta=1e-5)
    total = create_accountant("rdp", spent.history + plan(more)).get_epsilon(1e-5)
    assert 3.99 <= total <= 4.0
