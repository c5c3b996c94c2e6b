"""A whole federated run: set up or resume, run the rounds, select on validation, report test."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data.fake_users import simulated_devices
from common.data.load import cached_sequence_data
from common.data.partition import cached_partitioning
from common.data.run_inputs import record_inputs
from common.errors import ConfigError, DataError
from common.evaluation.item_stats import ItemStatistics
from common.evaluation.ranking import evaluate, evaluate_by_group, model_scores
from common.evaluation.reranking import reranker_for
from common.evaluation.user_groups import user_groups_for
from common.model.checkpoint import save_model
from common.model.warm_start import warm_start
from common.privacy.releases import releasable_summary
from common.training.step import model_for
from server.cohort import CohortPlan, federated_evaluate
from server.loop import NODE_WAIT_SECONDS, discover_clients, run_rounds
from server.pretraining import pretrained_arrays, public_only_comparison
from server.privacy import PrivacyTracker
from server.privacy_report import write_privacy_report
from server.reports import write_reports
from server.run_state import RunState, config_fingerprint
from server.strategies import build_strategy, load_strategy_state


def resolve_run_dir(config: RunConfig) -> Path:
    if config.federation.out_dir:
        return Path(config.federation.out_dir).expanduser().resolve()
    return (Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()


def make_evaluator(config: RunConfig, data, grid: Grid | None = None, plan: CohortPlan | None = None):
    """evaluate(arrays, split) on the server's copy of the validation / test targets, or, with
    `federated-evaluation`, by the clients on their own held-out items (the server only sums).
    With a public cohort, its users are the ones validated on (and left out of `all_users`)."""
    if config.federation.federated_evaluation:
        return _federated_evaluator(config, grid, plan)
    public = public_users(config)
    pool = public if len(public) else np.arange(data.num_users)
    users = None if len(public) == 0 else pool
    if config.federation.eval_users and config.federation.eval_users < len(pool):
        users = np.sort(
            np.random.default_rng(config.train.seed).choice(pool, config.federation.eval_users, replace=False)
        )
    protected = np.setdiff1d(np.arange(data.num_users), public) if len(public) else None
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    options = _evaluation_options(config, data)

    def evaluate_arrays(arrays, split: str, all_users: bool = False) -> dict:
        model.load_arrays(arrays.to_torch_state_dict() if isinstance(arrays, ArrayRecord) else arrays)
        model.eval()
        return evaluate(model_scores(model), data, split, users=protected if all_users else users, **options)

    return evaluate_arrays


def public_users(config: RunConfig) -> np.ndarray:
    """Rows of the public cohort (users who consented to share their histories), or none."""
    if config.federation.public_fraction <= 0 or config.data.catalogue_path:
        return np.zeros(0, dtype=np.int64)
    return cached_partitioning(config.data, config.federation, config.train.seed).public


def round_validator(config: RunConfig, evaluate_arrays):
    """What validates each round's model, or None. Under DP only public data may choose the released
    round (`common.privacy.releases`): the public cohort's validation items, else nothing (the last
    round is released)."""
    if config.privacy.dp_mode == "none":
        return evaluate_arrays
    if len(public_users(config)) and not config.federation.federated_evaluation:
        return evaluate_arrays
    return None


def _evaluation_options(config: RunConfig, data) -> dict:
    stats = ItemStatistics.from_data(data)  # once per run: the beyond-accuracy metrics' training statistics
    return dict(
        top_k=config.train.top_k,
        mask_seen=config.train.mask_seen,
        batch_size=config.train.eval_batch_size,
        device=config.train.device,
        rerank=reranker_for(config.train, stats),
        stats=stats,
    )


def grouped_test_metrics(config: RunConfig, data, arrays, groups: dict, source: str) -> tuple[dict, dict]:
    """Test metrics of every user and, from the same lists, per user group (`user_groups_for`) with
    the gaps between groups; on the server's copy of the data."""
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    model.load_arrays(arrays)
    model.eval()
    users = test_users(config, data)
    test, by_group = evaluate_by_group(
        model_scores(model), data, "test", groups, users=users, **_evaluation_options(config, data)
    )
    return test, {"split": "test", "source": source, "attributes": by_group}


def test_users(config: RunConfig, data) -> np.ndarray | None:
    """The users whose test items score a run: all but the public cohort (None: every user)."""
    public = public_users(config)
    return np.setdiff1d(np.arange(data.num_users), public) if len(public) else None


def _federated_evaluator(config: RunConfig, grid: Grid, plan: CohortPlan):
    keys = plan.keys
    users = None
    if config.federation.eval_users and config.federation.eval_users < len(keys):
        users = np.random.default_rng(config.train.seed).choice(keys, config.federation.eval_users, replace=False)

    def evaluate_arrays(arrays, split: str | tuple[str, ...], all_users: bool = False) -> dict:
        """One split's means; a tuple of splits: {split: means}, asked of each node in one message."""
        record = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord(arrays)
        return federated_evaluate(grid, plan, record, split, None if all_users else users, server_round=0)

    return evaluate_arrays


@dataclass(frozen=True)
class ServerCatalogue:
    """What the server knows of the data: the items; the users only when it holds interactions."""

    item_ids: np.ndarray  # (N + 1,) original item ID per model index, [0] = padding
    num_users: int | None

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1


def server_catalogue(config: RunConfig, data=None) -> ServerCatalogue:
    if not config.data.catalogue_path:
        return ServerCatalogue(data.item_ids, data.num_users)
    path = Path(config.data.catalogue_path)
    try:
        item_ids = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the item catalogue ({exc}); it must be the JSON list of original "
            "item IDs that `fedseqrec partition` writes"
        ) from exc
    if item_ids.ndim != 1 or len(item_ids) < 2:
        raise DataError(f"{path}: the item catalogue must be a list of at least two item IDs (index 0 = padding)")
    return ServerCatalogue(item_ids, None)


INIT_MODEL_REPORT = "init-model.json"


def _initial_arrays(config: RunConfig, catalogue: ServerCatalogue, run_dir: Path, data=None) -> dict:
    """Random weights (seeded), or with `init-model` a previous run's model fitted to this catalogue;
    then, with `pretrain-epochs`, trained on the public data (`server.pretraining`)."""
    arrays = _starting_arrays(config, catalogue, run_dir)
    if not config.federation.pretrain_epochs:
        return arrays
    if data is None:
        raise ConfigError("pretrain-epochs needs the server to hold the data (not a catalogue-path server)")
    return pretrained_arrays(config, data, arrays, public_users(config), run_dir)


def _starting_arrays(config: RunConfig, catalogue: ServerCatalogue, run_dir: Path) -> dict:
    if not config.federation.init_model:
        return model_for(
            config.model, config.data, catalogue.num_items, seed=config.train.seed, item_ids=catalogue.item_ids
        ).arrays()
    start = warm_start(config.model, config.data, config.train.seed, catalogue.item_ids, config.federation.init_model)
    (run_dir / INIT_MODEL_REPORT).write_text(json.dumps(start.report, indent=2))
    log(
        INFO,
        "fedseqrec: starting from %s (%d items kept, %d new, %d dropped)",
        start.report["path"],
        start.report["items_kept"],
        start.report["items_new"],
        start.report["items_dropped"],
    )
    return start.arrays


@dataclass
class Setup:
    """What the rounds start from: the run folder, the server's data, and the run's state."""

    run_dir: Path
    flat: dict
    data: object  # SequenceData, or None for a server with a catalogue only
    catalogue: ServerCatalogue
    groups: tuple | None  # user groups for the final fairness report
    state: RunState


@dataclass
class Clients:
    """Who answered the identification call, and the cohort plan over them (if any)."""

    keys: dict[int, int]
    hosts: list[int]
    plan: CohortPlan | None
    identify_seconds: float


@dataclass
class Accounting:
    """The population a DP guarantee is set against, delta, and the tracker that books the rounds."""

    population: int  # clients the sampling is over
    members: int  # users among them
    accounted: int  # the population the accountant uses (a projection's, with simulated-population)
    delta: float
    tracker: PrivacyTracker


def run_federation(grid: Grid, config: RunConfig, run_dir: Path | None = None) -> dict:
    """Set up or resume, identify the clients, plan the privacy, run the rounds, release and report."""
    started = time.perf_counter()
    setup = _set_up(config, Path(run_dir) if run_dir else resolve_run_dir(config))
    clients = _identify(grid, config)
    accounting = _account(config, clients, setup.state.privacy)
    strategy = accounting.tracker.wrap(build_strategy(config))
    if setup.state.strategy:
        load_strategy_state(strategy, setup.state.strategy)
    evaluate_arrays = make_evaluator(config, setup.data, grid, clients.plan)
    state = run_rounds(
        grid,
        config,
        strategy,
        setup.state,
        setup.run_dir,
        round_validator(config, evaluate_arrays),
        clients.keys,
        _round_config(config, setup.run_dir, accounting),
        accounting.tracker,
        cohort=clients.plan if config.federation.cohort_engine else None,
    )
    return _release(config, setup, clients, accounting, state, evaluate_arrays, started)


def _set_up(config: RunConfig, run_dir: Path) -> Setup:
    """The run folder with its config and inputs, the server's data, and a new or resumed state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = config.to_flat()
    (run_dir / "config.json").write_text(json.dumps(flat, indent=2))
    record_inputs(run_dir, config)  # where each input file was, with its sha256; a resume must read the same
    # A server with a catalogue only never reads interactions (federated evaluation does the ranking).
    data = None if config.data.catalogue_path else cached_sequence_data(config.data)
    catalogue = server_catalogue(config, data)
    # user groups for the final fairness report; read now, so that a bad users file fails before round 1
    groups = None if config.federation.federated_evaluation else user_groups_for(config, data)
    fingerprint = config_fingerprint(flat)
    state = RunState.load(run_dir, fingerprint)
    if state is None:
        state = RunState(fingerprint=fingerprint, round=0, arrays=_initial_arrays(config, catalogue, run_dir, data))
        log(INFO, "fedseqrec: new run in %s", run_dir)
    else:
        log(INFO, "fedseqrec: resuming %s after round %d", run_dir, state.round)
    return Setup(run_dir, flat, data, catalogue, groups, state)


def _identify(grid: Grid, config: RunConfig) -> Clients:
    """The clients that answer, and on the cohort engine (or with federated evaluation) the plan of
    which node hosts which simulated device."""
    identify_started = time.perf_counter()
    keys, hosts = discover_clients(grid, timeout=3600.0, wait=NODE_WAIT_SECONDS)
    identify_seconds = time.perf_counter() - identify_started
    if not keys and not hosts:
        raise RuntimeError(f"no client identified itself within {NODE_WAIT_SECONDS:.0f} s; check the SuperNodes' logs")
    plan = None
    if config.federation.cohort_engine or config.federation.federated_evaluation:
        plan = _cohort_plan(config, keys, hosts)
    return Clients(keys, hosts, plan, identify_seconds)


def _cohort_plan(config: RunConfig, keys: dict[int, int], hosts: list[int]) -> CohortPlan:
    # simulated devices: the partition's one-user clients, and a simulated promotion attack's fake
    # users, which register like any device (the server cannot tell); real devices: none
    simulated = 0
    if hosts:
        real = cached_partitioning(config.data, config.federation, config.train.seed).num_clients
        simulated = simulated_devices(config.federation, real)
    plan = CohortPlan(config, simulated, hosts, keys)
    if config.federation.user_trim_beta and not hosts:
        raise ConfigError(
            "user-trim-beta is the simulated hosts' trimmed mean of their devices; real devices reply one "
            "by one, and the cohort engine's server averages them (set user-trim-beta = 0)"
        )
    if config.federation.max_row_norm and not hosts:
        raise ConfigError(
            "max-row-norm is applied device by device on the simulated hosts; the server does not clip "
            "real devices' rows yet (set max-row-norm = 0)"
        )
    log(
        INFO,
        "fedseqrec: %s",
        f"{simulated} simulated devices on {len(hosts)} nodes" if hosts else f"{len(keys)} clients",
    )
    return plan


def _account(config: RunConfig, clients: Clients, ledger: dict | None) -> Accounting:
    """The population and delta of the guarantee, and the tracker (resumed from `ledger`, the state's)."""
    population, members = dp_population(config, clients.plan, clients.keys)
    if clients.plan is not None:
        clients.plan.population = population  # Poisson's q = expected cohort / it, whoever is connected
    accounted, accounted_users = accounted_population(config, population, members)
    delta = config.privacy.delta or 1.0 / accounted_users  # <= 1 / users, as the literature asks
    return Accounting(population, members, accounted, delta, PrivacyTracker(config, accounted, delta, ledger))


def _round_config(config: RunConfig, run_dir: Path, accounting: Accounting) -> dict:
    """What every round's message carries besides the model (public values)."""
    fed = config.federation
    expected_rounds = fed.num_server_rounds * min(1.0, fed.clients_per_round / accounting.population)
    round_config = {"run-dir": str(run_dir), "delta": accounting.delta, "expected-rounds": expected_rounds}
    if config.privacy.dp_mode == "client":  # the public size each client's DP plan assumes
        round_config["reference-samples"] = -(-accounting.members // accounting.population)
    return round_config


def _release(config, setup: Setup, clients: Clients, accounting: Accounting, state, evaluate_arrays, started) -> dict:
    """The released model, its metrics (and the public-only model's), the privacy report and summary."""
    run_dir, data, catalogue = setup.run_dir, setup.data, setup.catalogue
    best_arrays = state.best.get("arrays", state.arrays)
    released_round = state.best.get("round", state.round)
    test, by_group, validation = _final_metrics(config, data, setup.groups, evaluate_arrays, best_arrays, clients.plan)
    model = model_for(
        config.model, config.data, catalogue.num_items, seed=config.train.seed, item_ids=catalogue.item_ids
    )
    model.load_arrays(best_arrays)
    save_model(run_dir / "model.pt", model, catalogue.item_ids, run_config=setup.flat, best_round=released_round)
    summary = {
        "rounds": state.round,
        "best_round": released_round,
        "selection": "validation" if "round" in state.best else "last round",
        "validation": validation,
        "test": test,
        "metrics_by_group": by_group,
        "num_users": accounting.members,
        "public_users": len(public_users(config)),
        "num_items": catalogue.num_items,
        "failed_clients": sum(r.get("failed", 0) for r in state.history),
        "late_replies": sum(r.get("late", 0) for r in state.history),
        "invalid_replies": sum(r.get("invalid", 0) for r in state.history),
        "skipped_rounds": [r["round"] for r in state.history if "skipped" in r],
        "declined_clients": sum(r.get("declined", 0) for r in state.history),
        "wall_seconds_this_process": time.perf_counter() - started,
        "identify_seconds": clients.identify_seconds,
        "round_seconds_total": sum(r.get("seconds", 0.0) for r in state.history),
    }
    public_only = (
        None if test is None else public_only_comparison(config, data, best_arrays, test_users(config, data), run_dir)
    )
    if public_only is not None:
        summary["public_only"] = public_only
    if state.stopped_early:
        summary["stopped_early"] = state.stopped_early
    if (run_dir / INIT_MODEL_REPORT).exists():
        summary["init_model"] = json.loads((run_dir / INIT_MODEL_REPORT).read_text())
    if config.privacy.dp_mode != "none":
        summary["privacy"] = write_privacy_report(
            run_dir,
            config,
            accounting.tracker,
            state.history,
            accounting.accounted,
            accounting.delta,
            accounting.members,
            stopped_early=state.stopped_early,
            released_round=released_round,
        )
    if test is None:  # withheld under DP on real devices (`_final_metrics`): not written at all
        summary = {k: v for k, v in summary.items() if k not in ("test", "validation", "metrics_by_group")}
    summary = releasable_summary(summary, config)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_reports(run_dir, state.history, config.train.top_k)
    if test is None:
        log(INFO, "fedseqrec: done; test metrics withheld (DP run on real devices) -> %s", run_dir)
        return summary
    k = config.train.top_k
    log(
        INFO,
        "fedseqrec: done; test ndcg@%d %.4f  hr@%d %.4f  -> %s",
        *(k, test[f"ndcg@{k}"], k, test[f"hr@{k}"], run_dir),
    )
    return summary


def _final_metrics(config: RunConfig, data, groups, evaluate_arrays, arrays, plan) -> tuple:
    """(test, test by group, validation) of the released model. Under DP a deployment's devices do not
    send their unnoised test means (it would be a release outside the claim): withheld (None)."""
    if config.federation.federated_evaluation:  # the clients rank; the server sees means only
        if config.privacy.dp_mode != "none" and plan is not None and not plan.hosts:
            return None, None, None
        both = evaluate_arrays(arrays, ("test", "validation"), all_users=True)
        return both["test"], None, both["validation"]
    test, by_group = grouped_test_metrics(config, data, arrays, *groups)
    public = len(public_users(config)) > 0
    validation = evaluate_arrays(arrays, "validation", all_users=not public)  # the public cohort's, when there is one
    return test, by_group, validation


def accounted_population(config: RunConfig, population: int, members: int) -> tuple[int, int]:
    """(population, users) the accountant and delta are set against: the real ones, or with
    `simulated-population` the projected population's (the noise it would need at the same cohort)."""
    projected = config.privacy.simulated_population
    if not projected:
        return population, members
    if projected < population:
        raise ConfigError(
            f"simulated-population = {projected:,} is smaller than the {population:,} users this run trains on; "
            "a projection is to a larger population (or set it to 0)"
        )
    return projected, projected


def dp_population(config: RunConfig, plan: CohortPlan | None, keys: dict[int, int]) -> tuple[int, int]:
    """(clients a DP guarantee is set against, users among them: delta's denominator).

    The declared population-floor; else the simulated devices, or the clients of the server's own
    partition. Real devices with a server that holds no data must declare it: the devices that
    answered the first call are not the population (they come and go)."""
    fed = config.federation
    if fed.population_floor:
        return fed.population_floor, fed.population_floor
    if plan is not None and plan.hosts:
        return plan.num_users, plan.num_users
    if not config.data.catalogue_path:
        partitioning = cached_partitioning(config.data, fed, config.train.seed)
        members = sum(len(client) for client in partitioning.clients)
        return partitioning.num_clients, members
    if config.privacy.dp_mode != "none":
        raise ConfigError(
            f"dp-mode = {config.privacy.dp_mode} with real devices and a server without data: set population-floor "
            "to the number of users the guarantee is for (delta = 1 / it); the devices connected now are not the "
            "population"
        )
    population = len(plan.keys) if plan is not None else len(keys)
    return population, population
