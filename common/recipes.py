"""The run config, translated into the plain values each library stage takes.

Configuration flows one way: run config -> `RunConfig` (typed, validated) at the edges (the ServerApp,
the ClientApp, each command) -> the values below. This module is the one place under `common/` that
reads a `RunConfig` to build those values, so a library function's signature names what it uses
(a device's local recipe, the ranking cut-off, a DP plan's settings), never the 118-key config.
"""

from __future__ import annotations

from dataclasses import replace

from common.config import RunConfig
from common.training.augmentation import augmentation_for
from common.training.cohort import LocalRecipe
from common.training.cohort_clients import CohortTraining, Ranking
from common.training.federated import LocalTraining


def device_recipe(config: RunConfig, simulated: bool = False) -> LocalRecipe:
    """An honest device's local recipe; `simulated`: the host also applies the server's check of each
    device's reply (max-update-norm), which a real device's reply meets at the server itself."""
    fed = config.federation
    # One training window per user, so a local epoch is one optimiser step. Under server-side DP
    # each user clips its own whole update on its device.
    clip = config.privacy.clipping_norm if config.privacy.dp_mode == "server" else 0.0
    return LocalRecipe(
        steps=fed.local_epochs,
        optimizer=fed.local_optimizer,
        lr=fed.local_lr,
        clip=clip,
        touched_rows=fed.local_item_rows == "touched",
        drop_above=fed.max_update_norm if simulated else 0.0,
        row_clip=fed.max_row_norm if simulated else 0.0,
        score_precision=fed.score_precision,
    )


def attacker_recipe(config: RunConfig, simulated: bool = False) -> LocalRecipe:
    """A fake user's recipe: the honest steps on its fake window, boosted by sim-attack-scale, never
    clipped for DP; it knows the server's max-update-norm and stays just under it (a dropped reply
    promotes nothing). `simulated`: the server's checks apply to it as to any device (max-row-norm)."""
    bound = config.federation.max_update_norm
    return replace(device_recipe(config, simulated), scale=config.federation.sim_attack_scale, clip=bound * (1 - 1e-4))


def cohort_training(config: RunConfig, num_items: int, simulated: bool = False) -> CohortTraining:
    """A cohort host's training values; `simulated`: its users are simulated devices (`device_recipe`)."""
    return CohortTraining(
        model=config.model,
        data=config.data,
        seed=config.train.seed,
        honest=device_recipe(config, simulated),
        attacker=attacker_recipe(config, simulated),
        trim=config.federation.user_trim_beta,
        augmentation=augmentation_for(config.train, num_items),
    )


def ranking(config: RunConfig) -> Ranking:
    train = config.train
    return Ranking(top_k=train.top_k, mask_seen=train.mask_seen, batch_size=train.eval_batch_size)


def local_training(config: RunConfig, num_items: int) -> LocalTraining:
    """A cross-silo or DP-SGD client's local training values, for a catalogue of `num_items`."""
    fed, train = config.federation, config.train
    return LocalTraining(
        model=config.model,
        data=config.data,
        privacy=config.privacy,
        seed=train.seed,
        epochs=fed.local_epochs,
        optimizer=fed.local_optimizer,
        lr=fed.local_lr,
        weight_decay=train.weight_decay,
        batch_size=train.batch_size,
        augmentation=augmentation_for(train, num_items),
    )


def leakage_trainings(
    config: RunConfig, num_items: int, *, noise_multiplier: float, max_grad_norm: float
) -> tuple[LocalTraining, LocalTraining]:
    """The update-leakage audit's two local recipes for one user alone: the run's, without DP, and
    with DP-SGD at the audited noise. No accountant or population of the run's: these offline
    updates are never accounted."""
    # One user's update on the plain path: the cohort engine's own settings do not apply to it (and
    # the config refuses them without the engine).
    one_user = {
        "cohort-engine": False,
        "user-sampling": "fixed",
        "local-item-rows": "all",
        "max-row-norm": 0.0,
        "secure-aggregation": False,
        "user-trim-beta": 0.0,
        "server-mechanism": "dp-fedavg",
        "accountant": "rdp",
        "simulated-population": 0,
    }
    plain = config.replace(**{"dp-mode": "none", **one_user})
    client_dp = config.replace(
        **{
            "dp-mode": "client",
            **one_user,
            "noise-multiplier": noise_multiplier,
            "max-grad-norm": max_grad_norm,
            "target-epsilon": 0.0,
            "max-epsilon": 0.0,
            "loss": "ce",
            "strategy": "fedavg" if config.federation.strategy == "fedprox" else config.federation.strategy,
            "delta": config.privacy.delta or 1e-5,
            "dp-reference-samples": 1,  # one user alone, one window: its plan as a one-window client's
        }
    )
    return local_training(plain, num_items), local_training(client_dp, num_items)
