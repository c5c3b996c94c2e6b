"""SecAgg+ rounds: the server learns only the nodes' weighted mean, and it equals the plain one."""

from __future__ import annotations

import json

import pytest
import torch

from common.model.checkpoint import load_model
from tests.conftest import COHORT, _run

pytestmark = pytest.mark.usefixtures("cache_env")

RUN = {**COHORT, "num-server-rounds": 2, "strategy": "fedavg", "eval-every-rounds": 2}


def _final(out) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(out / "model.pt")
    return model.arrays()


def test_secagg_round_gives_the_plain_rounds_model(cache, tmp_path):
    plain, secure = tmp_path / "plain", tmp_path / "secure"
    _run({**RUN, "cohort-nodes": 3, "out-dir": str(plain)}, cache, num_supernodes=3)
    log = _run({**RUN, "cohort-nodes": 3, "secure-aggregation": True, "out-dir": str(secure)}, cache, num_supernodes=3)
    assert "Secure aggregation commencing" in log
    rows = [json.loads(line) for line in (secure / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("secure-aggregation") == 1 for r in rows)
    a, b = _final(plain), _final(secure)
    for key in a:  # quantisation (2^22 levels over +-8, scaled by users / max weight) is the only difference
        assert torch.allclose(a[key], b[key], atol=5e-5), key


def test_user_level_dp_fedavg_through_secagg(cache, tmp_path):
    from common.privacy.server_accounting import dpfedavg_epsilon

    out = tmp_path / "dp-secure"
    _run(
        {
            **RUN,
            "cohort-nodes": 3,
            "secure-aggregation": True,
            "dp-mode": "server",
            "user-sampling": "poisson",
            "noise-multiplier": 1.0,
            "clipping-norm": 0.5,
            "out-dir": str(out),
        },
        cache,
        num_supernodes=3,
    )
    report = json.loads((out / "privacy.json").read_text())
    assert report["epsilon"] == pytest.approx(
        dpfedavg_epsilon(
            noise_multiplier=1.0,
            num_sampled=60,
            population=report["clients"],
            rounds=2,
            delta=report["delta"],
            sampling="poisson",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["test"]["ndcg@10"] > 0
