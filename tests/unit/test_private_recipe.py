"""The private recipe's tools: the privacy planner's command, typed arguments, the population projection."""

from __future__ import annotations

import argparse
import json

import pytest

from common.config import RunConfig
from common.errors import ConfigError
from fedseqrec.arg_types import bounded
from fedseqrec.cli import main
from server.federation import accounted_population

PROJECTED = {
    "partition": "user",
    "cohort-engine": True,
    "user-sampling": "poisson",
    "dp-mode": "server",
    "simulated-population": 600_000,
}


def test_plan_privacy_prints_the_noise_a_population_needs(capsys):
    assert (
        main(
            ["plan-privacy", "--population", "6040", "--cohort", "1000", "--rounds", "120", "--epsilon", "8", "--json"]
        )
        == 0
    )
    small = json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "plan-privacy",
                "--population",
                "600000",
                "--cohort",
                "1000",
                "--rounds",
                "120",
                "--epsilon",
                "8",
                "--json",
            ]
        )
        == 0
    )
    large = json.loads(capsys.readouterr().out)
    assert small["epsilon_spent"] <= 8.0 and large["epsilon_spent"] <= 8.0
    assert large["noise_multiplier"] < small["noise_multiplier"] / 2  # q 100x smaller: far less noise
    assert small["delta"] == pytest.approx(1 / 6040) and small["participations"] == pytest.approx(120 * 1000 / 6040)


def test_plan_privacy_names_the_server_tau_that_matches_the_noise(capsys):
    args = ["plan-privacy", "--population", "600000", "--cohort", "1000", "--rounds", "600", "--epsilon", "8"]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    shown = capsys.readouterr().out
    tau = float(shown.split("server-tau = ")[1].split()[0])
    assert tau == pytest.approx(plan["noise_multiplier"] / 1000, rel=0.05)  # z C / cohort, C = 1


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--population", "nan"], "expected an integer"),
        (["--epsilon", "inf"], "a finite number"),
        (["--epsilon", "0"], "(0, 1000]"),
        (["--cohort", "7000"], "more than --population"),
    ],
)
def test_plan_privacy_refuses_bad_numbers_in_one_line(capsys, bad, says):
    args = {"--population": "6040", "--cohort": "100", "--rounds": "10", "--epsilon": "1"}
    args.update(dict(zip(bad[::2], bad[1::2])))
    assert main(["plan-privacy", *[x for pair in args.items() for x in pair]]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_bounded_types_quote_only_a_prefix_of_a_long_value():
    parse = bounded(float, 0, 1)
    assert parse("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError) as error:
        parse("9" * 500)
    assert len(str(error.value)) < 120


def test_a_projection_accounts_for_the_projected_population_and_needs_a_larger_one():
    config = RunConfig.from_flat(PROJECTED)
    assert accounted_population(config, 6040, 6040) == (600_000, 600_000)
    assert accounted_population(RunConfig(), 6040, 6040) == (6040, 6040)
    with pytest.raises(ConfigError, match="larger population"):
        accounted_population(RunConfig.from_flat({**PROJECTED, "simulated-population": 100}), 6040, 6040)
    with pytest.raises(ConfigError, match="Poisson"):
        RunConfig.from_flat({**PROJECTED, "user-sampling": "fixed"})
