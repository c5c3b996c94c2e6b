"""The federation's round loop: sample clients, train, aggregate, evaluate, checkpoint.

Written out (rather than `Strategy.start`) so that a run can resume at any round, count failed
and declined clients, evaluate on a schedule, and stop at a privacy budget. Aggregation itself
is Flower's strategy code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.atomic_files import atomic_write
from common.config import RunConfig
from common.errors import CheckpointError
from common.privacy import randomness
from common.privacy.releases import releasable_row
from common.stop_request import take_stop_request
from common.training.federated import client_seed
from common.training.step import lr_factor
from server.reply_checks import reply_problem
from server.run_state import RunState
from server.secure_aggregation import secure_mean
from server.strategies import strategy_state


class SampledGrid:
    """A view of the grid that shows the strategy only this round's sampled nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name):
        return getattr(self._grid, name)


NODE_WAIT_SECONDS = 120.0  # how long a ServerApp waits for its first SuperNode before giving up


def connected_nodes(grid: Grid, wait: float, poll: float = 0.5) -> list[int]:
    """The grid's node ids, waiting up to `wait` seconds for the first: the ServerApp can start
    before its SuperNodes have registered (Flower's in-process simulation starts both at once;
    a deployment's SuperNodes may connect after the run is submitted)."""
    deadline = time.monotonic() + wait
    while True:
        node_ids = sorted(grid.get_node_ids())
        if node_ids or time.monotonic() >= deadline:
            return node_ids
        time.sleep(poll)


def discover_clients(grid: Grid, timeout: float, wait: float = 0.0) -> tuple[dict[int, int], list[int]]:
    """(client-key -> node id, node ids that host simulated devices), asked once per run: sampling
    by identity makes runs reproducible and resumable even though node ids change between runs.
    `wait`: seconds to wait for the first node (at the start of a run)."""
    node_ids = connected_nodes(grid, wait)
    messages = [
        Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=node)
        for node in node_ids
    ]
    keys, hosts = {}, []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(WARNING, "node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        metrics = reply.content["metrics"]
        if "cohort-host" in metrics:
            hosts.append(reply.metadata.src_node_id)
        else:
            keys[int(metrics["client-key"])] = reply.metadata.src_node_id
    return keys, sorted(hosts)


def sample_clients(keys: list[int], count: int, seed: int, server_round: int, secret: bool = False) -> list[int]:
    """Uniform sample without replacement: a pure function of (seed, round), or, when `secret`
    (server-side DP, whose amplification by sampling needs a draw nobody can redo), from OS entropy."""
    rng = randomness.secret_rng() if secret else np.random.default_rng([seed, server_round])
    return sorted(rng.choice(sorted(keys), size=min(count, len(keys)), replace=False).tolist())


# Why a round with no update released nothing. No counts in it: on one-user nodes under Poisson DP they
# would be the cohort size, which the round log withholds as data; the reason itself is availability.
NO_UPDATE = "no node answered with a valid update (all failed, late, declined or dropped)"


def train_round(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    node_ids: list[int],
    config: ConfigRecord,
    timeout: float,
    order: dict[int, int] | None = None,
    refuse: Callable[[int], str | None] | None = None,
    per_node: dict[int, dict] | None = None,
    combine: Callable[[list[Message]], list[Message]] | None = None,
    check: Callable[[Message], str | None] | None = None,
    min_replies: int = 1,
) -> tuple[ArrayRecord | None, dict, dict]:
    """One round of training on the sampled nodes; returns (new arrays or None, round stats).

    `order` maps node id -> client key: replies are aggregated in client-key order, so float
    sums are identical across runs even though node ids are not. `refuse(contributing)` is asked
    after the replies arrive and before aggregation; a reason from it leaves the round
    unaggregated (stats["refused"] says why). `per_node` adds config entries per node (the
    cohort engine's chunks of users); `combine` replaces the contributing replies before aggregation
    (the cohort engine's DP noise on the users' sum). `check(reply)` gives why a reply must be
    dropped (`server.reply_checks`); with fewer than `min_replies` valid replies the round is skipped
    (stats["skipped"] says why). Replies that miss the deadline (`timeout`) are counted as late."""
    view = SampledGrid(grid, node_ids)
    messages = list(strategy.configure_train(server_round, arrays, config, view))
    if per_node:  # strategies share one content record between messages: give each node its own
        messages = [
            Message(
                content=RecordDict(
                    {
                        **dict(m.content.items()),
                        "config": ConfigRecord(
                            {**dict(m.content["config"]), **per_node.get(m.metadata.dst_node_id, {})}
                        ),
                    }
                ),
                message_type=m.metadata.message_type,
                dst_node_id=m.metadata.dst_node_id,
            )
            for m in messages
        ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    replies.sort(key=lambda m: (order or {}).get(m.metadata.src_node_id, m.metadata.src_node_id))
    failed = [r for r in replies if r.has_error()]
    ok = [r for r in replies if not r.has_error()]
    declined = [r for r in ok if "arrays" not in r.content]
    contributing = [r for r in ok if "arrays" in r.content]
    for reply in failed:
        log(
            WARNING,
            "round %s: client on node %s failed: %s",
            server_round,
            reply.metadata.src_node_id,
            reply.error.reason.strip().splitlines()[-1] if reply.error.reason else "no reason",
        )
    invalid = []
    if check is not None:
        verdicts = [(reply, check(reply)) for reply in contributing]
        invalid = [(reply, why) for reply, why in verdicts if why]
        contributing = [reply for reply, why in verdicts if not why]
        for reply, why in invalid:
            log(WARNING, "round %s: reply from node %s dropped: %s", server_round, reply.metadata.src_node_id, why)
    stats = {
        "sampled": len(node_ids),
        "replied": len(contributing),
        "failed": len(failed),
        "late": len(node_ids) - len(replies),
        "invalid": len(invalid),
        "declined": len(declined),
    }
    per_client = {
        (order or {}).get(r.metadata.src_node_id, r.metadata.src_node_id): dict(r.content["metrics"]) for r in ok
    }
    if not contributing:  # every node failed, was late, declined or was dropped: nothing to release
        stats["skipped"] = NO_UPDATE
        return None, stats, per_client
    return (
        _aggregate(strategy, server_round, contributing, len(contributing), stats, refuse, combine, min_replies),
        stats,
        per_client,
    )


def _aggregate(strategy, server_round, replies, arrived, stats, refuse, combine, min_replies) -> ArrayRecord | None:
    """The gate every round passes before anything is released: min-replies, then the privacy budget
    (with what really arrived), then `combine` (DP noise) and the strategy. Stats say why not."""
    if arrived < min_replies:
        stats["skipped"] = f"{arrived} valid replies < min-replies {min_replies}"
        return None
    reason = refuse(arrived) if refuse is not None else None
    if reason:
        stats["refused"] = reason
        return None
    if combine is not None:
        replies = combine(replies)
    new_arrays, metrics = strategy.aggregate_train(server_round, replies)
    if metrics is not None:
        stats["train-loss"] = float(metrics.get("train-loss", float("nan")))
    return new_arrays


def secure_train_round(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    node_ids: list[int],
    config: ConfigRecord,
    timeout: float,
    run_config: RunConfig,
    refuse: Callable[[int], str | None] | None = None,
    per_node: dict[int, dict] | None = None,
    combine: Callable[[list[Message]], list[Message]] | None = None,
    min_replies: int = 1,
) -> tuple[ArrayRecord | None, dict, dict]:
    """`train_round` through SecAgg+ (`server.secure_aggregation`): the server gets only the nodes'
    weighted mean, which enters `combine` (DP noise) and the strategy as one reply. Replies cannot be
    checked one by one here: the devices clip their own updates."""
    list(strategy.configure_train(server_round, arrays, config, SampledGrid(grid, node_ids)))  # FedOpt's state
    configs = {
        node: {**dict(config), "server-round": server_round, **(per_node or {}).get(node, {})} for node in node_ids
    }
    mean, per_client, failed, clipped_share = secure_mean(grid, run_config, server_round, arrays, configs, timeout)
    users = sum(int(m.get("num-examples", 0)) for m in per_client.values())
    for weights in per_client.values():  # a host's weight is its users (the cohort engine counts them)
        weights["users"] = weights["num-examples"]
    stats = {
        "sampled": len(node_ids),
        "replied": len(per_client),
        "failed": failed,
        "late": max(0, len(node_ids) - len(per_client) - failed),
        "invalid": 0,
        "declined": 0,
        "secure-aggregation": 1,
    }
    if mean is None or users == 0:
        stats["skipped"] = NO_UPDATE
        return None, stats, per_client
    # The server learns only sums: the mean update, the weights (users), the share of clipped users.
    metrics = {"num-examples": users, "unit-weight": 1, "clipped": int(round(clipped_share * users))}
    reply = Message(
        content=RecordDict({"arrays": mean, "metrics": MetricRecord(metrics)}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    new_arrays = _aggregate(strategy, server_round, [reply], len(per_client), stats, refuse, combine, min_replies)
    return new_arrays, stats, per_client


def arrays_to_torch(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """The round log beside the checkpoint, written atomically; a failed write stops the run like a
    failed checkpoint (a resume rewrites it from the checkpoint's history)."""
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    try:
        atomic_write(path, lambda handle: handle.write(text))
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write the round log ({exc.strerror or exc}); the run stops here: free space "
            "(or fix the folder) and run the same command again to resume from the last checkpoint"
        ) from exc


def run_rounds(
    grid: Grid,
    config: RunConfig,
    strategy: Strategy,
    state: RunState,
    run_dir: Path,
    evaluate_fn,
    keys: dict[int, int],
    round_config: dict,
    privacy=None,
    timeout: float = 3600.0,
    cohort=None,
) -> RunState:
    """Rounds state.round + 1 .. num-server-rounds; checkpoint after each. `privacy` (a
    server.privacy.PrivacyTracker) may stop the run before a round that would exceed the budget
    and records epsilon after each round. `cohort` (a server.cohort.CohortPlan) samples users
    and hands their chunks to the nodes that host them. `evaluate_fn` (None: nothing validates, the
    last round is released) scores the model on a schedule and keeps the best; under DP only on
    public data (`server.federation.round_validator`). Under DP each row keeps only the fields the
    run may release (`common.privacy.releases`)."""
    loop = RoundLoop(grid, config, strategy, state, run_dir, evaluate_fn, keys, round_config, privacy, timeout, cohort)
    return loop.run()


class RoundLoop:
    """`run_rounds`, phase by phase: whether to stop, whom to sample, the round's attempts (retries),
    counting the users who replied, and what the round leaves behind (ledger, validation, checkpoint)."""

    def __init__(
        self, grid, config, strategy, state, run_dir, evaluate_fn, keys, round_config, privacy, timeout, cohort
    ):
        self.grid, self.config, self.strategy, self.state = grid, config, strategy, state
        self.run_dir, self.evaluate_fn, self.keys, self.round_config = run_dir, evaluate_fn, keys, round_config
        self.privacy, self.timeout, self.cohort = privacy, timeout, cohort
        self.fed = config.federation
        self.key = f"ndcg@{config.train.top_k}"
        self.known_nodes = set(grid.get_node_ids())
        self.arrays = ArrayRecord(state.arrays)
        # Server-DP noise and client sampling come from OS entropy unless the run asked to replay them;
        # runs without server DP have no guarantee resting on them and stay reproducible.
        self.reproducible = config.privacy.dp_mode != "server" or config.privacy.reproducible_dp_noise
        self.progress = Progress(self.fed.num_server_rounds, state.round, state.best.get("metric"))

    def run(self) -> RunState:
        self._announce()
        for server_round in range(self.state.round + 1, self.fed.num_server_rounds + 1):
            stop = self._stop_reason(server_round)
            if stop is not None:
                log(INFO, "fedseqrec: stopping before round %s: %s", server_round, stop[0])
                self.state.stopped_early = stop[1]
                break
            round_start = time.perf_counter()
            self.keys, self.known_nodes = _rediscover(self.grid, self.keys, self.known_nodes, self.cohort, self.timeout)
            _schedule_server_lr(self.strategy, self.config, server_round)
            # Flower's DP wrappers draw noise from numpy's global RNG: secret unless asked to replay.
            derived = client_seed(self.config.train.seed, server_round, -1)
            randomness.seed_numpy_global(reproducible=self.reproducible, derived=derived)
            users = self._sample(server_round)
            if users is None:
                break
            if len(users) == 0:  # a Poisson draw can be empty: nothing to train, nothing to release
                self._empty_round(server_round)
                continue
            sampled_from = _sampled_from(self.keys, self.cohort)
            new_arrays, stats, per_client = self._attempts(server_round, users, derived, sampled_from)
            if "refused" in stats:  # nothing of this round is aggregated, released or checkpointed
                log(WARNING, "fedseqrec: round %d not aggregated and the run stops: %s", server_round, stats["refused"])
                self.state.stopped_early = f"round {server_round} not released: {stats['refused']}"
                break
            if "skipped" in stats:  # nothing aggregated or released; the next round starts from the same model
                retried = f" after {stats['attempts']} attempts" if stats["attempts"] > 1 else ""
                log(WARNING, "fedseqrec: round %d skipped%s: %s", server_round, retried, stats["skipped"])
            # the replies aggregated (nodes), before the cohort engine counts its users: what the ledger
            # books, and only when the round was released
            arrived = stats.pop("arrived")
            if new_arrays is not None:
                self.arrays = new_arrays
            row = {"round": server_round, **stats, "train-seconds": time.perf_counter() - round_start}
            self._finish_round(server_round, row, per_client, arrived, sampled_from, round_start)
        return self.state

    def _announce(self) -> None:
        available = len(self.cohort.keys) if self.cohort is not None else len(self.keys)
        engine = self.cohort is not None
        population = (self.cohort.population or available) if engine else available
        # the length of a recipe that transfers between datasets: rounds each user's own data gets
        participations = self.fed.num_server_rounds * min(1.0, self.fed.clients_per_round / max(population, 1))
        log(
            INFO,
            "fedseqrec: %d clients available, %d per round%s; %d rounds: %.1f participations per client",
            available,
            min(self.fed.clients_per_round, available),
            f" ({self.fed.user_sampling} sampling, cohort engine on {len(self.cohort.hosts)} nodes)" if engine else "",
            self.fed.num_server_rounds,
            participations,
        )

    def _stop_reason(self, server_round: int) -> tuple[str, str] | None:
        """(what the log says, what the state records) when the run must stop before this round."""
        requested = take_stop_request(self.run_dir)
        if requested is not None:
            return f"stop requested ({requested})", f"stop requested before round {server_round}: {requested}"
        privacy = self.privacy
        if privacy is not None and not privacy.allows(server_round, _sampled_from(self.keys, self.cohort)):
            return f"it would exceed {privacy.cap_name}", f"{privacy.cap_name} reached before round {server_round}"
        return None

    def _sample(self, server_round: int) -> np.ndarray | None:
        """This round's users (cohort engine) or client keys; None when DP-FTRL's schedule is over."""
        secret = not self.reproducible
        if self.cohort is None:
            keys = list(self.keys)
            return np.array(
                sample_clients(keys, self.fed.clients_per_round, self.config.train.seed, server_round, secret)
            )
        users = self.cohort.sample(server_round, secret=secret)
        if len(users) == 0 and self.cohort.schedule_over(server_round):
            log(
                INFO,
                "fedseqrec: stopping before round %s: every user has joined its max-participations trees (DP-FTRL)",
                server_round,
            )
            self.state.stopped_early = f"DP-FTRL participation cap reached before round {server_round}"
            return None
        return users

    def _empty_round(self, server_round: int) -> None:
        log(WARNING, "fedseqrec: round %s sampled no user; nothing trained", server_round)
        self.state.round = server_round
        self.state.history.append(
            {
                "round": server_round,
                "sampled": 0,
                "replied": 0,
                "failed": 0,
                "declined": 0,
                "train-seconds": 0.0,
                "seconds": 0.0,
            }
        )

    def _attempts(self, server_round: int, users: np.ndarray, derived: int, sampled_from: int):
        """Send the round, and again (the same users and seeds) while it is short and retries are left."""
        privacy, fed = self.privacy, self.fed
        this_round = ConfigRecord(
            {**self.round_config, **(privacy.round_config(server_round) if privacy is not None else {})}
        )
        combine = (
            (lambda replies, start=self.arrays, r=server_round: privacy.private_sum(replies, start, r))
            if self.cohort is not None and privacy is not None and privacy.mode == "server"
            else None
        )
        refuse = (lambda arrived, n=sampled_from: privacy.refuses(arrived, n)) if privacy is not None else None
        for attempt in range(1, fed.round_retries + 2):
            if attempt > 1:  # the same users and seeds again, once crashed nodes have had time to return
                time.sleep(fed.retry_wait)
                self.keys, self.known_nodes = _rediscover(
                    self.grid, self.keys, self.known_nodes, self.cohort, self.timeout
                )
                randomness.seed_numpy_global(reproducible=self.reproducible, derived=derived)
            absent = [int(u) for u in users if not _present(int(u), self.keys, self.cohort)]
            present = np.array([u for u in users if int(u) not in absent], dtype=np.int64)
            if self.cohort is not None:
                per_node = self.cohort.assign(present)
                node_ids, order = sorted(per_node), {node: i for i, node in enumerate(sorted(per_node))}
            else:
                per_node = None
                node_ids, order = [self.keys[int(c)] for c in present], {node: key for key, node in self.keys.items()}
            new_arrays, stats, per_client = _train_attempt(
                self.grid, self.strategy, server_round, self.arrays, node_ids, this_round, order, per_node,
                self.config, self.timeout, refuse, combine,
            )  # fmt: skip
            stats["arrived"] = stats["replied"] if new_arrays is not None else 0
            self._count_users(stats, users, absent, node_ids, per_client)
            stats["attempts"] = attempt
            if "skipped" not in stats or attempt > fed.round_retries:
                break
            log(
                WARNING,
                "fedseqrec: round %d repeated (attempt %d of %d, in %.0f s): %s",
                server_round,
                attempt + 1,
                fed.round_retries + 1,
                fed.retry_wait,
                stats["skipped"],
            )
        return new_arrays, stats, per_client

    def _count_users(self, stats: dict, users, absent: list[int], node_ids: list[int], per_client: dict) -> None:
        """On simulated hosts: count users, not the nodes that computed them; elsewhere a sampled
        client whose node is gone counts as failed."""
        if self.cohort is not None and self.cohort.hosts:
            replied, rejected, fakes = (
                sum(int(m.get(key, 0)) for m in per_client.values())
                for key in ("users", "rejected-users", "fake-users")
            )
            stats.update(
                {
                    "nodes": len(node_ids),
                    "sampled": len(users),
                    "replied": replied,
                    "failed": len(users) - replied - rejected,
                    "invalid": stats.get("invalid", 0) + rejected,  # over max-update-norm, device by device
                }
            )
            if fakes:  # simulated attack bookkeeping (a real server cannot tell fake users apart)
                stats["fake-users"] = fakes
        elif absent:
            stats.update({"sampled": len(users), "failed": stats["failed"] + len(absent)})

    def _finish_round(self, server_round, row, per_client, arrived, sampled_from, round_start) -> None:
        """The ledger, validation on schedule, the released row, the checkpoint and the progress line."""
        state, fed = self.state, self.fed
        if self.privacy is not None:
            row.update(self.privacy.record(server_round, per_client, arrived=arrived, sampled_from=sampled_from))
            state.privacy = self.privacy.state_dict()
        if self.evaluate_fn is not None and (
            server_round % fed.eval_every_rounds == 0 or server_round == fed.num_server_rounds
        ):
            row["validation"] = self.evaluate_fn(self.arrays, "validation")
            if row["validation"][self.key] > state.best.get("metric", float("-inf")):
                state.best = {
                    "round": server_round,
                    "metric": row["validation"][self.key],
                    "arrays": arrays_to_torch(self.arrays),
                }
        row["seconds"] = time.perf_counter() - round_start
        state.round, state.arrays = server_round, arrays_to_torch(self.arrays)
        row = releasable_row(row, self.config)
        state.history.append(row)
        state.strategy = strategy_state(self.strategy)
        if server_round % fed.checkpoint_every == 0 or server_round == fed.num_server_rounds:
            state.save(self.run_dir)
            write_jsonl(Path(self.run_dir) / "metrics.jsonl", state.history)  # always matches the checkpoint
        log(INFO, "%s", self.progress.line(row, self.key))


def _rediscover(grid: Grid, keys: dict[int, int], known_nodes: set, cohort, timeout: float):
    """A node left, joined, or came back with a new id: ask again who is who."""
    nodes = set(grid.get_node_ids())
    if nodes == known_nodes:
        return keys, known_nodes
    found, hosts = discover_clients(grid, timeout)
    if cohort is not None:
        cohort.hosts, cohort.devices = hosts or cohort.hosts, found or cohort.devices
    log(INFO, "fedseqrec: nodes changed; %d clients, %d hosts identified", len(found or keys), len(hosts))
    return found or keys, nodes


def _sampled_from(keys: dict[int, int], cohort) -> int:
    """How many clients this round's sample is drawn from: the simulated users, or the devices
    identified now (fixed-size rounds are booked with it; devices come and go)."""
    return len(cohort.keys) if cohort is not None else len(keys)


def _present(key: int, keys: dict[int, int], cohort) -> bool:
    """Whether a sampled client's node is connected (simulated users always are: their hosts compute them)."""
    if cohort is not None:
        return bool(cohort.hosts) or key in cohort.devices
    return key in keys


def _train_attempt(
    grid, strategy, server_round, arrays, node_ids, this_round, order, per_node, config, timeout, refuse, combine
):
    fed = config.federation
    if fed.secure_aggregation:
        return secure_train_round(
            grid,
            strategy,
            server_round,
            arrays,
            node_ids,
            this_round,
            min(timeout, fed.round_deadline),
            config,
            refuse=refuse,
            per_node=per_node,
            combine=combine,
            min_replies=fed.min_replies,
        )
    return train_round(
        grid,
        strategy,
        server_round,
        arrays,
        node_ids,
        this_round,
        min(timeout, fed.round_deadline),
        order,
        refuse=refuse,
        per_node=per_node,
        check=lambda reply, start=arrays: reply_problem(
            reply, start, max_update_norm=fed.max_update_norm, max_examples=fed.max_reply_examples
        ),
        min_replies=fed.min_replies,
        combine=combine,
    )


def _schedule_server_lr(strategy: Strategy, config: RunConfig, server_round: int) -> None:
    """FedAdam / FedYogi: the server learning rate rises linearly over `server-lr-warmup` rounds, then
    stays or falls on a cosine (`server-lr-schedule`), as centralized training's schedule does per epoch."""
    inner = strategy
    while hasattr(inner, "strategy"):
        inner = inner.strategy
    fed = config.federation
    if hasattr(inner, "eta") and (fed.server_lr_warmup > 0 or fed.server_lr_schedule != "constant"):
        factor = lr_factor(server_round, fed.num_server_rounds, fed.server_lr_schedule, fed.server_lr_warmup)
        inner.eta = fed.server_lr * factor


class Progress:
    """One line per round: round / total, clients, loss, seconds per round, ETA, validation, epsilon."""

    def __init__(self, total: int, done: int, best: float | None = None):
        self.total, self.first, self.started, self.best = total, done, time.perf_counter(), best

    def line(self, row: dict, key: str) -> str:
        done = row["round"] - self.first
        per_round = (time.perf_counter() - self.started) / max(done, 1)
        eta = per_round * (self.total - row["round"])
        val = row.get("validation", {}).get(key)
        parts = [f"fedseqrec: round {row['round']}/{self.total}"]
        if "replied" in row:  # under DP with Poisson sampling the cohort's size is not released
            parts.append(
                f"clients {row['replied']} ok, {row['failed']} failed, {row['declined']} declined"
                + "".join(f", {row[k]} {k}" for k in ("late", "invalid") if row.get(k))
            )
        if "train-loss" in row:  # not released under DP
            parts.append(f"loss {row['train-loss']:.4f}")
        parts.append(f"{per_round:.1f} s/round, ETA {_duration(eta)}")
        if val is not None:
            self.best = val if self.best is None else max(self.best, val)
            parts.append(f"val {key} {val:.4f} (best {self.best:.4f})")
        if "epsilon" in row:
            parts.append(f"epsilon {row['epsilon']:.3f}")
        return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
