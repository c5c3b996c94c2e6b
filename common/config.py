"""The one typed, validated run configuration, and the one source of its defaults.

The dataclass defaults below are the main job's settings; `pyproject.toml [tool.flwr.app.config]`
(which Flower reads) lists the same values, checked key by key by a test. Other experiments,
the centralized baseline included, are named TOML files under simulations/configs/.

Configuration flows one way: a flat mapping of kebab-case keys (Flower's `run_config`, a TOML
file, or CLI flags) -> `RunConfig.from_flat` -> frozen dataclasses -> code. Unknown keys,
wrong types and out-of-range values raise `ConfigError` naming the key and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config_domains import check_domains
from common.errors import ConfigError

# sequence augmentation operators (common/training/augmentation.py)
AUGMENTATIONS = ("crop", "mask", "reorder", "substitute")


def augment_operators(text: str) -> tuple[str, ...]:
    """The `augment` key's operators: `"crop, mask"` -> ("crop", "mask"); "" or "none" -> ()."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    return () if names == ("none",) else names


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


# Sanity caps on sizes: far above any setting in use (max-len 200, emb-dim 64), far below what would
# exhaust memory minutes into a run instead of failing at once.
MAX_SIZE = 1_000_000
MAX_WIDTH = 16_384
MAX_LAYERS = 64


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass(frozen=True)
class DataSettings:
    data: str = "ml-1m"  # dataset name (ml-1m, ml-100k, synthetic) or an interactions file path
    data_dir: str = ""  # where named datasets live; "" -> $FEDSEQREC_DATA_DIR, then download cache
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    min_item_count: int = 5  # SASRec-style 5-core items (ML-1M: 3,416 items)
    min_user_count: int = 3  # leave-one-out needs >= 1 training item
    max_len: int = 50  # model context; 200 is the literature's ML-1M setting
    train_windows: str = _choice("last", "all")  # last: the latest max_len + 1 items only; all: every chunk
    synthetic_users: int = 500  # used only when data = "synthetic"
    synthetic_items: int = 200
    # A server without interaction data: the federation's item catalogue (JSON of original item IDs in
    # model index order, written by `fedseqrec partition`); needs federated-evaluation = true.
    catalogue_path: str = ""
    # Fairness groups (user-groups = auto): a MovieLens 1M users.dat with gender, age, occupation;
    # "" -> ML-1M's own users.dat beside its interactions, when present.
    users_file: str = ""
    # Item side features (public catalogue metadata, not user data), comma-separated: genre and/or year
    # for MovieLens, or categorical columns of item-metadata. "" = none (item IDs only).
    item_features: str = ""
    # The metadata file: "" -> the dataset's own movies.dat (ml-1m) / u.item (ml-100k), or the
    # interactions file itself for a file path (its columns named in item-features).
    item_metadata: str = ""

    def validate(self) -> None:
        _check(self.min_item_count >= 1, "min-item-count", "must be >= 1")
        _check(self.min_user_count >= 3, "min-user-count", "must be >= 3 (train, validation and test items)")
        _check(2 <= self.max_len <= MAX_SIZE, "max-len", f"must be in [2, {MAX_SIZE:,}]")
        _check(2 <= self.synthetic_users <= MAX_SIZE, "synthetic-users", f"must be in [2, {MAX_SIZE:,}]")
        _check(10 <= self.synthetic_items <= MAX_SIZE, "synthetic-items", f"must be in [10, {MAX_SIZE:,}]")
        names = [n.strip() for n in self.item_features.split(",")]
        _check(
            not self.item_features.strip() or (all(names) and len(set(names)) == len(names)),
            "item-features",
            f"must be distinct comma-separated feature names (e.g. genre,year), got {self.item_features!r}",
        )
        _check(
            not self.item_metadata or bool(self.item_features.strip()),
            "item-metadata",
            "is set but item-features is empty; name the features to read from it",
        )
        _check(
            self.data != "synthetic" or not self.item_features.strip() or bool(self.item_metadata),
            "item-features",
            "synthetic data has no item metadata; set item-metadata to a file with an item column",
        )


@dataclass(frozen=True)
class ModelSettings:
    model: str = _choice("sasrec", "gru", "lstm")
    emb_dim: int = 64  # item embedding size (also the SASRec width)
    # > 0: a factorised item table, (N + 1) x item-rank rows times one shared item-rank x emb-dim map:
    # fewer weights for user-level DP noise to cover (the full table is ~70% of SASRec's weights).
    item_rank: int = 0
    hidden_dim: int = 128  # RNN state size (LSTM/GRU only)
    num_layers: int = 2  # Transformer blocks or stacked RNN layers
    num_heads: int = 1
    dropout: float = 0.2
    # SASRec position ids: recency (the newest item at the last position) or absolute (counted from
    # the window's first item, as in SASRec+ / Klenitskiy & Vasilev 2023). LSTM/GRU have none.
    positions: str = _choice("recency", "absolute")
    # SASRec block: pre-ln (GPT-2 style) or original (Kang & McAuley's, as in SASRec+: post-LN-like,
    # a ReLU feed-forward of width emb-dim). LSTM/GRU have none.
    sasrec_block: str = _choice("pre-ln", "original")
    loss: str = _choice("ce", "sampled-softmax")  # full-catalogue cross-entropy, or sampled for huge catalogues
    num_negatives: int = 256  # sampled-softmax negatives per batch
    # How a batch's token losses are averaged. sequence: per sequence, then over sequences (every
    # user counts once; what DP-SGD's per-sample clipping needs). token: over all positions of the
    # batch (the SASRec+ literature's recipe: a heavy user's positions weigh as much as anyone's).
    # On the cohort engine a batch is one user's window, where the two are the same.
    loss_reduction: str = _choice("sequence", "token")

    def validate(self) -> None:
        _check(1 <= self.emb_dim <= MAX_WIDTH, "emb-dim", f"must be in [1, {MAX_WIDTH:,}]")
        _check(0 <= self.item_rank < self.emb_dim, "item-rank", f"must be 0 (full table) or in 1..{self.emb_dim - 1}")
        _check(1 <= self.hidden_dim <= MAX_WIDTH, "hidden-dim", f"must be in [1, {MAX_WIDTH:,}]")
        _check(1 <= self.num_layers <= MAX_LAYERS, "num-layers", f"must be in [1, {MAX_LAYERS}]")
        _check(
            self.num_heads >= 1 and self.emb_dim % self.num_heads == 0,
            "num-heads",
            f"must be >= 1 and divide emb-dim ({self.emb_dim})",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _check(self.num_negatives >= 1, "num-negatives", "must be >= 1")
        _check(
            self.positions == "recency" or self.model == "sasrec",
            "positions",
            f"= absolute is a SASRec setting; model = {self.model} has no position ids",
        )
        _check(
            self.sasrec_block == "pre-ln" or self.model == "sasrec",
            "sasrec-block",
            f"is a SASRec setting; model = {self.model} has no Transformer blocks",
        )


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 200  # centralized epochs (upper bound; early stopping ends sooner)
    batch_size: int = 32
    lr: float = 1e-3
    # Centralized training's learning rate per epoch: a linear warm-up over lr-warmup-epochs, then
    # constant, or cosine decay towards 0 at `epochs` (common.training.step.lr_factor).
    lr_schedule: str = _choice("constant", "cosine")
    lr_warmup_epochs: int = 0
    weight_decay: float = 0.0
    patience: int = 10  # evaluations without validation NDCG@10 gain before stopping
    eval_every: int = 1  # epochs between validation runs
    seed: int = 42
    device: str = "cpu"
    top_k: int = 10
    mask_seen: bool = True  # exclude items already in the user's history from rankings
    eval_batch_size: int = 512
    num_threads: int = 0  # torch intra-op threads (central training, and each ClientApp message); 0: torch's default
    # Sequence augmentation of training windows (common/training/augmentation.py), centrally and on devices:
    # a comma list of crop, mask, reorder, substitute ("" = off); each drawn window is augmented with
    # probability augment-prob by one operator picked at random.
    augment: str = ""
    augment_prob: float = 0.5
    augment_crop_keep: float = 0.8  # crop keeps this share of a window's items
    augment_mask_rate: float = 0.2  # share of input positions set to padding (0)
    augment_reorder_rate: float = 0.2  # share of a window shuffled (one contiguous run)
    augment_substitute_rate: float = 0.1  # share of items replaced by random catalogue items
    # Evaluation only: re-rank each user's rerank-candidates best items into the top-k for diversity
    # (mmr) or long-tail exposure (long-tail); rerank-lambda = weight of that goal (0 = model order).
    rerank: str = _choice("none", "mmr", "long-tail")
    rerank_lambda: float = 0.2
    rerank_candidates: int = 100
    # Per-group metrics and gaps in the final report: activity (history-length quantile bins) and,
    # with auto, gender / age / occupation when a users file is known (users-file); none: skip.
    user_groups: str = _choice("auto", "activity", "none")
    activity_groups: int = 4

    def validate(self) -> None:
        unknown = [name for name in augment_operators(self.augment) if name not in AUGMENTATIONS]
        _check(not unknown, "augment", f"unknown operator(s) {unknown}; use a comma list of {', '.join(AUGMENTATIONS)}")
        _check(0.0 < self.augment_prob <= 1.0, "augment-prob", "must be in (0, 1]")
        for key, value in (
            ("augment-crop-keep", self.augment_crop_keep),
            ("augment-mask-rate", self.augment_mask_rate),
            ("augment-reorder-rate", self.augment_reorder_rate),
            ("augment-substitute-rate", self.augment_substitute_rate),
        ):
            _check(0.0 < value < 1.0, key, "must be in (0, 1)")
        for key, value in (
            ("epochs", self.epochs),
            ("batch-size", self.batch_size),
            ("patience", self.patience),
            ("eval-every", self.eval_every),
            ("top-k", self.top_k),
            ("eval-batch-size", self.eval_batch_size),
            ("activity-groups", self.activity_groups),
        ):
            _check(1 <= value <= MAX_SIZE, key, f"must be in [1, {MAX_SIZE:,}]")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(
            0 <= self.lr_warmup_epochs < self.epochs, "lr-warmup-epochs", f"must be in [0, epochs) = [0, {self.epochs})"
        )
        _check(self.weight_decay >= 0, "weight-decay", "must be >= 0")
        _check(self.num_threads >= 0, "num-threads", "must be >= 0")
        _check(0.0 <= self.rerank_lambda <= 1.0, "rerank-lambda", "must be in [0, 1] (0 keeps the model's order)")
        _check(
            self.rerank_candidates >= self.top_k,
            "rerank-candidates",
            f"must be >= top-k ({self.top_k}): the re-ranker picks the top-k from these",
        )
        _check(
            self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            "device",
            "must be cpu, cuda, cuda:N or mps",
        )


@dataclass(frozen=True)
class FederationSettings:
    num_server_rounds: int = 15
    # fedmedian .. bulyan: Byzantine-robust aggregation (Flower's strategies), for cross-silo / per-user clients
    strategy: str = _choice(
        "fedavg", "fedadam", "fedyogi", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"
    )
    partition: str = _choice("iid", "user", "dirichlet")  # user: one user per client (cross-device)
    num_partitions: int = 10  # silos for iid/dirichlet partitions
    dirichlet_alpha: float = 0.5
    clients_per_round: int = 10
    local_epochs: int = 3
    local_lr: float = 3e-3
    server_lr: float = 1e-2  # FedAdam/FedYogi eta
    server_tau: float = 1e-3  # FedAdam/FedYogi adaptivity (Reddi et al. 2021); small = closer to plain Adam
    proximal_mu: float = 0.01  # FedProx
    eval_every_rounds: int = 1
    eval_users: int = 0  # validation users for server-side evaluation each round; 0 = all
    holdout_fraction: float = 0.0  # users kept out of training, as non-members for audits
    # The public cohort: this share of users consented to share their histories. They are kept out of
    # the federation (and so of any DP population) and out of test; the server validates on them, so
    # choosing the released round costs no privacy, and pretrains on them (pretrain-epochs).
    public_fraction: float = 0.0
    # An external public corpus (another service's users) mapped onto the catalogue by title and year:
    # "ml-100k", or a folder with ML-100K's u.data and u.item. Used only to pretrain (pretrain-epochs).
    public_corpus: str = ""
    # > 0: before round 1 the server trains the model centrally on the public data (the public cohort's
    # histories and the public corpus) for up to this many epochs, keeping the epoch best on the public
    # cohort's validation; the federation fine-tunes it. Public data: it costs no epsilon.
    pretrain_epochs: int = 0
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 64
    # The population a DP guarantee's delta and Poisson rate are set against (delta = 1 / it, q =
    # clients-per-round / it): 0 -> the simulated users, or the users in the server's data. Real devices
    # that come and go need it declared (a floor on the users who hold devices).
    population_floor: int = 0
    out_dir: str = ""  # "" -> runs/<timestamp>
    checkpoint_every: int = 1
    # Continual learning: a previous run's model.pt to start from instead of random weights (items
    # matched by original ID; new items get fresh rows). Used at round 0 only; resuming uses the checkpoint.
    init_model: str = ""
    canaries: int = 0  # audit: random-sequence canary users, each trained on with probability 1/2
    canary_length: int = 20  # items per canary (the last two are its validation / test items)
    audit_messages: bool = False  # audit: clients record each reply's structure in RUN_DIR/message-audit
    # Cross-device at scale (partition = user): each SuperNode simulates many one-user devices at once.
    cohort_engine: bool = False
    cohort_nodes: int = 2  # SuperNodes that host the simulated devices (results do not depend on it)
    cohort_chunk: int = 64  # users trained together in one vectorised call (fixes the dropout draws)
    # bfloat16: the cohort engine's one-step path scores the window positions against the item table
    # with bfloat16 inputs (float32 sums, float32 softmax): 0.7-0.8x the time of a chunk where the CPU
    # multiplies bfloat16 natively (AVX512-BF16, AMX); elsewhere float32, with a warning. Unclipped,
    # non-private runs only: a DP run's per-user norms stay float32.
    score_precision: str = _choice("float32", "bfloat16")
    user_sampling: str = _choice("fixed", "poisson")  # fixed: clients-per-round users; poisson: each w.p. q
    local_optimizer: str = _choice("adam", "sgd")  # per client (per user in the cohort engine), fresh each round
    # touched: a user's local steps change only the item-table rows of items in its own window (its
    # history and targets), so the clipped update spends its norm on what the user knows, not on the
    # softmax's push on every other item; the server's DP noise still covers every row.
    local_item_rows: str = _choice("all", "touched")
    # > 0: a round's user updates are combined by the coordinate-wise trimmed mean (this share cut at
    # each end) instead of the mean: a defence of a server that sees each device's update (no SecAgg,
    # no server DP); on the cohort engine a chunk must hold the whole round (cohort-chunk >= clients-per-round).
    user_trim_beta: float = 0.0
    server_lr_warmup: int = 0  # rounds over which FedAdam/FedYogi's server-lr rises linearly to its value
    # After the warm-up, FedAdam/FedYogi's server-lr stays (constant) or falls on a cosine towards 0 at
    # num-server-rounds, for a run that has plateaued (on the 600k projection, still improving, it lost).
    server_lr_schedule: str = _choice("constant", "cosine")
    federated_evaluation: bool = False  # clients rank their own held-out items; the server only sums
    # Faults and attacks: every reply is checked before aggregation (server/reply_checks.py).
    max_update_norm: float = 0.0  # > 0: a reply whose update is longer is dropped (norm bounding)
    # > 0: each device's update of each item-table row is clipped to this L2 norm before aggregation,
    # so no device pushes one item harder than an honest holder of it does (promotion defence); on the
    # cohort engine's simulated hosts, device by device.
    max_row_norm: float = 0.0
    max_reply_examples: int = 0  # > 0: a reply claiming more examples is dropped
    min_replies: int = 1  # valid replies a round needs; fewer: the round is repeated (round-retries) or skipped
    # A short round (a node crashed, replies late) is sent again up to round-retries times, after
    # retry-wait seconds (time for a restarted node to reconnect), with the same users and seeds, so a
    # repeat that succeeds gives the model the uninterrupted run would have; then it is skipped.
    round_retries: int = 0
    retry_wait: float = 10.0
    round_deadline: float = 3600.0  # seconds a round waits for replies; later ones are discarded and counted
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end per coordinate
    assumed_malicious: int = 0  # krum, multikrum, bulyan: clients per round assumed malicious
    multikrum_select: int = 0  # multikrum: updates averaged; 0 -> all but assumed-malicious
    # SecAgg+ (Flower's workflow and client mod): the server learns only the sum of the nodes' replies.
    secure_aggregation: bool = False
    secagg_shares: float = 1.0  # key shares per node, as a share of the round's nodes (Flower: num_shares)
    secagg_threshold: float = 0.5  # shares needed to reconstruct, as a share of secagg-shares
    secagg_clip_range: float = 8.0  # weights are clipped to +-this before quantisation
    # Simulated faults and attackers (client/fault_injection.py), honoured only by simulated clients:
    # a real device never drops or attacks on the server's say.
    sim_dropout: float = 0.0  # share of sampled clients (users, on the cohort engine) that drop out each round
    sim_attack: str = _choice("none", "sign-flip", "scale", "random", "promote")
    # share of clients that attack (a fixed set, drawn from the run seed); on the cohort engine with
    # promote: fake one-user devices added to the population, as a share of the real users
    sim_attackers: float = 0.0
    sim_attack_scale: float = 10.0  # sign-flip / scale / random / promote: how far the update is pushed
    sim_target_item: int = 0  # promote: the model index of the item pushed into everyone's top-10
    # promote: the fake histories' other items, uniformly random or drawn by popularity (bandwagon)
    sim_fake_profile: str = _choice("random", "popular")

    def validate(self) -> None:
        for key, value in (
            ("num-server-rounds", self.num_server_rounds),
            ("num-partitions", self.num_partitions),
            ("clients-per-round", self.clients_per_round),
            ("local-epochs", self.local_epochs),
            ("eval-every-rounds", self.eval_every_rounds),
            ("checkpoint-every", self.checkpoint_every),
        ):
            _check(value >= 1, key, "must be >= 1")
        _check(self.dirichlet_alpha > 0, "dirichlet-alpha", "must be > 0")
        _check(self.local_lr > 0, "local-lr", "must be > 0")
        _check(self.server_lr > 0, "server-lr", "must be > 0")
        _check(self.server_tau > 0, "server-tau", "must be > 0")
        _check(self.proximal_mu >= 0, "proximal-mu", "must be >= 0")
        _check(self.eval_users >= 0, "eval-users", "must be >= 0")
        _check(0.0 <= self.holdout_fraction < 1.0, "holdout-fraction", "must be in [0, 1)")
        _check(0.0 <= self.public_fraction <= 0.5, "public-fraction", "must be in [0, 0.5]")
        _check(
            self.holdout_fraction + self.public_fraction < 1.0,
            "public-fraction",
            "public-fraction + holdout-fraction must leave users to train on (< 1)",
        )
        _check(0 <= self.pretrain_epochs <= 10_000, "pretrain-epochs", "must be in [0, 10000] (0 = no pretraining)")
        _check(0 < self.pretrain_lr < 10 and math.isfinite(self.pretrain_lr), "pretrain-lr", "must be in (0, 10)")
        _check(1 <= self.pretrain_batch_size <= 1 << 16, "pretrain-batch-size", "must be in [1, 65536]")
        _check(
            self.pretrain_epochs == 0 or self.public_fraction > 0 or bool(self.public_corpus),
            "pretrain-epochs",
            "needs public data to pretrain on: set public-fraction (an opt-in public cohort) and/or public-corpus",
        )
        _check(
            not self.public_corpus or self.pretrain_epochs > 0,
            "public-corpus",
            "is used only to pretrain; set pretrain-epochs > 0",
        )
        _check(0 <= self.population_floor <= 10**9, "population-floor", "must be in [0, 1e9] (0 = the known users)")
        _check(self.canaries >= 0, "canaries", "must be >= 0")
        _check(self.canary_length >= 3, "canary-length", "must be >= 3 (train, validation and test items)")
        _check(self.cohort_nodes >= 1, "cohort-nodes", "must be >= 1")
        _check(self.cohort_chunk >= 1, "cohort-chunk", "must be >= 1")
        _check(self.server_lr_warmup >= 0, "server-lr-warmup", "must be >= 0")
        _check(
            self.server_lr_schedule == "constant" or self.strategy in ("fedadam", "fedyogi"),
            "server-lr-schedule",
            f"a cosine schedule needs a server learning rate (strategy fedadam or fedyogi, not {self.strategy})",
        )
        _check(self.max_update_norm >= 0, "max-update-norm", "must be >= 0 (0 = no bound)")
        _check(self.max_row_norm >= 0, "max-row-norm", "must be >= 0 (0 = no bound)")
        _check(
            self.max_row_norm == 0 or self.cohort_engine,
            "max-row-norm",
            "the per-row clip is applied device by device on the cohort engine's simulated hosts "
            "(set cohort-engine = true, or max-row-norm = 0)",
        )
        _check(self.max_reply_examples >= 0, "max-reply-examples", "must be >= 0 (0 = no bound)")
        _check(self.min_replies >= 1, "min-replies", "must be >= 1")
        _check(self.round_retries >= 0, "round-retries", "must be >= 0 (0: a short round is skipped)")
        _check(0 <= self.retry_wait <= 3600, "retry-wait", "must be in [0, 3600] seconds")
        _check(self.round_deadline > 0, "round-deadline", "must be > 0 seconds")
        _check(0.0 <= self.trim_beta < 0.5, "trim-beta", "must be in [0, 0.5)")
        _check(self.assumed_malicious >= 0, "assumed-malicious", "must be >= 0")
        _check(
            self.strategy != "bulyan" or self.clients_per_round >= 4 * self.assumed_malicious + 3,
            "assumed-malicious",
            f"bulyan with {self.assumed_malicious} assumed malicious needs clients-per-round >= "
            f"4 x {self.assumed_malicious} + 3 = {4 * self.assumed_malicious + 3} (El Mhamdi et al. 2018); "
            "lower assumed-malicious or sample more clients",
        )
        _check(0.0 < self.secagg_shares <= 1.0, "secagg-shares", "must be in (0, 1]")
        _check(0.0 < self.secagg_threshold <= 1.0, "secagg-threshold", "must be in (0, 1]")
        _check(self.secagg_clip_range > 0, "secagg-clip-range", "must be > 0")
        _check(
            not self.secure_aggregation or self.cohort_engine,
            "secure-aggregation",
            "needs cohort-engine = true: a server that sees only sums cannot clip updates, so devices clip "
            "their own (the cohort engine does)",
        )
        _check(0.0 <= self.sim_dropout < 1.0, "sim-dropout", "must be in [0, 1)")
        _check(0.0 <= self.sim_attackers < 1.0, "sim-attackers", "must be in [0, 1)")
        _check(self.sim_attack_scale > 0, "sim-attack-scale", "must be > 0")
        _check(self.sim_target_item >= 0, "sim-target-item", "must be >= 0 (a model item index)")
        _check(
            self.sim_attack != "promote" or self.sim_target_item > 0,
            "sim-target-item",
            "sim-attack = promote needs the item to promote (a model item index >= 1)",
        )
        _check(
            not (self.cohort_engine and self.sim_attack not in ("none", "promote")),
            "sim-attack",
            "sign-flip, scale and random attackers are simulated per client, not on the cohort engine (set "
            "cohort-engine = false); the cohort engine simulates promote (fake users)",
        )
        _check(0.0 <= self.user_trim_beta < 0.5, "user-trim-beta", "must be in [0, 0.5)")
        _check(
            self.user_trim_beta == 0
            or (self.cohort_engine and self.user_sampling == "fixed" and self.cohort_chunk >= self.clients_per_round),
            "user-trim-beta",
            "the users' trimmed mean runs on the cohort engine with fixed sampling and one chunk per round "
            "(set cohort-engine = true, user-sampling = fixed, cohort-chunk >= clients-per-round)",
        )
        _check(
            self.user_trim_beta == 0 or not self.secure_aggregation,
            "user-trim-beta",
            "a server that sees only the sum (secure-aggregation) cannot take a trimmed mean of users",
        )
        _check(self.multikrum_select >= 0, "multikrum-select", "must be >= 0 (0 = all but assumed-malicious)")
        _check(
            self.cohort_engine or self.local_item_rows == "all",
            "local-item-rows",
            "touched is offered by the cohort engine only (set cohort-engine = true)",
        )
        _check(
            self.cohort_engine or self.user_sampling == "fixed",
            "user-sampling",
            "poisson sampling is offered by the cohort engine only (set cohort-engine = true)",
        )


@dataclass(frozen=True)
class PrivacySettings:
    dp_mode: str = _choice("none", "client", "server")
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0  # > 0: derive the noise multiplier from this budget instead
    max_grad_norm: float = 1.0  # client-side per-sample clipping bound
    clipping_norm: float = 1.0  # server-side per-update clipping bound
    adaptive_clipping: bool = False
    delta: float = 0.0  # 0 -> 1 / number of users
    # rdp for every mechanism; pld (tighter) for Poisson sampling and DP-FTRL on the server; prv (Opacus)
    # for client DP-SGD.
    accountant: str = _choice("rdp", "prv", "pld")
    # The budget cap no round may pass: 0 -> target-epsilon (when set), else none. A cap above
    # target-epsilon is a deliberate raise, and the privacy report says so.
    max_epsilon: float = 0.0
    # Client DP-SGD plans every client as if it held this many training samples (public): rate 1 / k with
    # k = round(it / batch-size) batches per epoch, and a fixed divisor, so nothing sent depends on how
    # many samples a client really holds. 0 -> users per client of the population (a public ratio).
    dp_reference_samples: int = 0
    opacus_mode: str = _choice("hooks", "functorch")  # "ew" cannot see our tied scorer (measured)
    secure_mode: bool = False  # Opacus' cryptographically secure noise (needs torchcsprng; slower)
    # Simulation only: DP noise and sampling from the run seed, so a run replays bit for bit. Its
    # guarantee does not hold against anyone who knows the seed; every report says so. Devices ignore it.
    reproducible_dp_noise: bool = False
    # Server DP on the cohort engine: DP-FedAvg (sampled users, noise on each round's sum) or DP-FTRL
    # (no sampling: tree-aggregated noise on the running sum, each user once per tree).
    server_mechanism: str = _choice("dp-fedavg", "dp-ftrl")
    max_participations: int = 0  # dp-ftrl: trees (passes over the users) a user may join; 0 = all of the run's
    # Adaptive clipping (Andrew et al. 2021): C follows the clip-quantile of the users' update norms,
    # learned from a noisy count whose privacy cost is part of the accounted noise multiplier.
    clip_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float = 0.0  # noise on the count of unclipped users; 0 -> expected cohort / 20
    # A projection, not a guarantee: > 0 trains on the real users with the noise a population of this
    # many users would need at the same expected cohort (q = cohort / it, delta = 1 / it), what Apple's
    # pfl-research calls a noise cohort. Its epsilon is for that population, not for this run's users;
    # every report labels the run a projection. Server DP with Poisson sampling on the cohort engine.
    simulated_population: int = 0

    @property
    def cap(self) -> float:
        """The epsilon no release may pass (0 = none): max-epsilon, or target-epsilon when it is unset."""
        return self.max_epsilon or self.target_epsilon

    def validate(self) -> None:
        _check(self.noise_multiplier >= 0, "noise-multiplier", "must be >= 0")
        _check(self.target_epsilon >= 0, "target-epsilon", "must be >= 0")
        _check(self.max_grad_norm > 0, "max-grad-norm", "must be > 0")
        _check(self.clipping_norm > 0, "clipping-norm", "must be > 0")
        _check(0.0 <= self.delta < 1.0, "delta", "must be in [0, 1)")
        _check(self.max_epsilon >= 0, "max-epsilon", "must be >= 0")
        _check(0 <= self.dp_reference_samples <= MAX_SIZE, "dp-reference-samples", f"must be in [0, {MAX_SIZE:,}]")
        _check(self.max_participations >= 0, "max-participations", "must be >= 0 (0 = no cap beyond the run)")
        _check(0.0 < self.clip_quantile < 1.0, "clip-quantile", "must be in (0, 1)")
        _check(self.clip_lr > 0, "clip-lr", "must be > 0")
        _check(self.clip_count_stddev >= 0, "clip-count-stddev", "must be >= 0 (0 = expected cohort / 20)")
        _check(0 <= self.simulated_population <= 10**10, "simulated-population", "must be in [0, 1e10] (0 = none)")


_GROUPS = {
    "data": DataSettings,
    "model": ModelSettings,
    "train": TrainSettings,
    "federation": FederationSettings,
    "privacy": PrivacySettings,
}


def _coerce(key: str, value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # TOML and float() both accept inf and nan
                raise ConfigError(f"{where}: config key '{key}': must be a finite number, got {_shown(value)}")
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: key '{key}' must be {kind.__name__}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A refused value as an error quotes it: its repr, cut to a short prefix."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _cross_check(parts: dict, where: str) -> None:
    """Combinations that would silently break a guarantee."""
    privacy, model, fed, data = parts["privacy"], parts["model"], parts["federation"], parts["data"]
    if data.catalogue_path and not fed.federated_evaluation:
        raise ConfigError(
            f"{where}: catalogue-path (a server without interaction data) needs "
            "federated-evaluation = true: the server has no held-out items to rank"
        )
    if fed.cohort_engine:
        needs = {
            "partition = user (one user per device)": fed.partition == "user",
            "train-windows = last (one training window per user)": data.train_windows == "last",
            "loss = ce": model.loss == "ce",
            "dp-mode none or server (client DP-SGD per user is not built)": privacy.dp_mode != "client",
            "strategy fedavg, fedadam or fedyogi": fed.strategy in ("fedavg", "fedadam", "fedyogi"),
        }
        missing = [need for need, ok in needs.items() if not ok]
        if missing:
            raise ConfigError(f"{where}: cohort-engine = true needs " + "; ".join(missing))
    if fed.score_precision == "bfloat16":
        needs = {
            "cohort-engine = true": fed.cohort_engine,
            "local-epochs = 1 and local-optimizer = sgd (one step: the update is the gradient)": fed.local_epochs == 1
            and fed.local_optimizer == "sgd",
            "dp-mode none (a DP run's per-user norms stay float32)": privacy.dp_mode == "none",
            "no per-user check or change of updates (max-update-norm, max-row-norm, user-trim-beta, "
            "local-item-rows = touched, sim-attack)": not (
                fed.max_update_norm or fed.max_row_norm or fed.user_trim_beta or fed.local_item_rows == "touched"
            )
            and fed.sim_attack == "none",
        }
        missing = [need for need, ok in needs.items() if not ok]
        if missing:
            raise ConfigError(
                f"{where}: score-precision = bfloat16 is the cohort engine's one-step path, which needs "
                + "; ".join(missing)
                + " (or set score-precision = float32)"
            )
    if privacy.dp_mode != "none":
        _private_run_checks(privacy, fed, where)
    if privacy.server_mechanism == "dp-ftrl":
        needs = {
            "cohort-engine = true": fed.cohort_engine,
            "dp-mode = server": privacy.dp_mode == "server",
            "user-sampling = fixed (DP-FTRL samples nobody: its schedule is a hash of user and tree)": fed.user_sampling
            == "fixed",
            "adaptive-clipping = false (a changing C inside a tree is not accounted)": not privacy.adaptive_clipping,
        }
        missing = [need for need, ok in needs.items() if not ok]
        if missing:
            raise ConfigError(f"{where}: server-mechanism = dp-ftrl needs " + "; ".join(missing))
    if fed.strategy in ROBUST_STRATEGIES and privacy.dp_mode == "server":
        raise ConfigError(
            f"{where}: strategy = {fed.strategy} cannot be used with dp-mode = server: DP-FedAvg's "
            "sensitivity is that of a sum of clipped updates; bound updates with max-update-norm"
        )
    if fed.user_trim_beta and privacy.dp_mode == "server":
        raise ConfigError(
            f"{where}: user-trim-beta cannot be used with dp-mode = server: DP-FedAvg's sensitivity is "
            "that of a sum of clipped updates, not of a trimmed mean"
        )
    if privacy.dp_mode == "client":
        if model.loss_reduction != "sequence":
            raise ConfigError(
                f"{where}: dp-mode = client needs loss-reduction = sequence (a token mean couples a "
                "batch's sequences, so no per-sample gradient is one sequence's)"
            )
        if model.loss != "ce":
            raise ConfigError(
                f"{where}: dp-mode = client needs loss = ce (sampled-softmax has no per-sample "
                "gradients through the scorer)"
            )
        if model.item_rank:
            raise ConfigError(
                f"{where}: dp-mode = client needs item-rank = 0 (the factorised table's shared map is used "
                "twice, and Opacus' per-sample gradients would miss its use in the scorer)"
            )
        if fed.strategy == "fedprox":
            raise ConfigError(
                f"{where}: dp-mode = client cannot use strategy = fedprox: the proximal term's "
                "gradient would bypass per-sample clipping; use fedavg, fedadam or fedyogi"
            )


def _private_run_checks(privacy, fed, where: str) -> None:
    """What a DP run may not do, because its guarantee would then not cover what it releases."""
    if fed.checkpoint_every > 1:
        raise ConfigError(
            f"{where}: checkpoint-every = {fed.checkpoint_every} under dp-mode = {privacy.dp_mode}: a crash between "
            "checkpoints would lose released rounds from the privacy ledger and re-run them with fresh noise; "
            "set checkpoint-every = 1"
        )
    if privacy.dp_mode == "server" and privacy.accountant == "prv":
        raise ConfigError(f"{where}: accountant = prv is Opacus' DP-SGD accountant; server DP uses rdp or pld")
    if privacy.dp_mode == "client" and privacy.accountant == "pld":
        raise ConfigError(f"{where}: client DP-SGD ledgers use Opacus' rdp or prv accountant; set accountant = rdp")
    if (
        privacy.accountant == "pld"
        and privacy.dp_mode == "server"
        and not (fed.cohort_engine and (fed.user_sampling == "poisson" or privacy.server_mechanism == "dp-ftrl"))
    ):
        raise ConfigError(
            f"{where}: accountant = pld accounts Poisson sampling and DP-FTRL (cohort-engine = true with "
            "user-sampling = poisson, or server-mechanism = dp-ftrl); fixed-size sampling is accounted with rdp"
        )
    if privacy.simulated_population and not (
        privacy.dp_mode == "server" and fed.cohort_engine and fed.user_sampling == "poisson"
    ):
        raise ConfigError(
            f"{where}: simulated-population projects DP-FedAvg with Poisson sampling to a larger population; "
            "it needs dp-mode = server, cohort-engine = true and user-sampling = poisson"
        )
    if 0 < privacy.max_epsilon < privacy.target_epsilon:
        raise ConfigError(
            f"{where}: max-epsilon {privacy.max_epsilon:g} is below target-epsilon {privacy.target_epsilon:g}: the run "
            "would stop before its planned rounds; lower target-epsilon instead"
        )


ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A run-config file's keys, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:  # also a key given twice ("Cannot overwrite a value")
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix that line (each key once, strings quoted)") from exc
    for key, value in values.items():
        if isinstance(value, dict):  # [table] sections: Flower's run config is flat
            raise ConfigError(
                f"{path}: [{key}] is a table, but run-config files are flat; write its keys at the top "
                "of the file, without the [section] line"
            )
    return values


def parse_settings(items: list[str], where: str = "--set") -> dict[str, Any]:
    """KEY=VALUE items from a command line; VALUE is read as TOML (3, 0.5, true, "x") and, when it is
    not TOML, as a plain string (genre,year). The keys are checked later, with the whole config."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE, e.g. --set num-server-rounds=20")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        key = key.strip()
        if key in out and out[key] != parsed:  # which one was meant? never drop one silently
            raise ConfigError(f"{where} sets {key!r} twice ({out[key]!r} and {parsed!r}): give it once")
        out[key] = parsed
    return out


@dataclass(frozen=True)
class RunConfig:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    @staticmethod
    def keys() -> dict[str, tuple[str, dataclasses.Field]]:
        """Every flat key -> (group name, dataclass field)."""
        return {f.name.replace("_", "-"): (group, f) for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], where: str = "run config") -> RunConfig:
        known = cls.keys()
        grouped: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        coerced_values: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else "; run `fedseqrec config` to list keys"
                raise ConfigError(f"{where}: unknown key '{key}'{hint}")
            group, f = known[key]
            kind = {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]
            coerced = _coerce(key, value, kind, where)
            choices = f.metadata.get("choices")
            if choices and coerced not in choices:
                raise ConfigError(f"{where}: key '{key}' must be one of {', '.join(choices)}; got {coerced!r}")
            grouped[group][f.name] = coerced_values[key] = coerced
        parts = {group: _GROUPS[group](**kwargs) for group, kwargs in grouped.items()}
        try:
            for part in parts.values():
                part.validate()
        except ConfigError as exc:  # say where the bad value came from
            raise ConfigError(f"{where}: {exc}") from exc
        check_domains(coerced_values, where)  # the outer range of every number; colliding columns
        _cross_check(parts, where)
        return cls(**parts)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        return cls.from_flat({**read_toml(path), **(overrides or {})}, where=str(path))

    def to_flat(self) -> dict[str, Any]:
        return {key: getattr(getattr(self, group), f.name) for key, (group, f) in self.keys().items()}

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with some flat keys changed (validated like any other input)."""
        return RunConfig.from_flat({**self.to_flat(), **flat})
