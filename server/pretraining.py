"""The server's public phase: pretrain on public data before round 1, compare the release with it after.

Public data here is the opt-in public cohort's histories (`public-fraction`) and an external corpus
(`public-corpus`); neither belongs to the protected population, so the pretrained model is public
and costs no epsilon. It is kept in the run folder (`public-model.pt`) so that the final report can
say what the private data added: the released model against the public-only model on the same
protected test users, with a paired interval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from common.config import RunConfig
from common.data.load import item_metadata_path
from common.data.public_corpus import load_public_corpus
from common.evaluation.metrics import ranking_metrics
from common.evaluation.paired import paired_gain
from common.evaluation.ranking import evaluate, model_scores, ranked_lists
from common.model.checkpoint import load_model, save_model
from common.training.pretrain import pretrain
from common.training.step import StepOptions, model_for

PUBLIC_MODEL = "public-model.pt"
PRETRAIN_REPORT = "pretrain.json"


def public_sequences(config: RunConfig, data, public: np.ndarray) -> tuple[list[np.ndarray], dict]:
    """Every public history to pretrain on, and where each part came from."""
    train = data.train_sequences()
    sequences = [train[u] for u in public if len(train[u]) >= 2]
    sources = {"public_cohort": {"users": len(sequences), "interactions": int(sum(len(s) for s in sequences))}}
    if config.federation.public_corpus:
        corpus = load_public_corpus(
            config.federation.public_corpus, item_metadata_path(config.data), data.item_ids, config.data.data_dir
        )
        sequences += corpus.sequences
        sources["public_corpus"] = corpus.report
    return sequences, sources


def pretraining_key(config: RunConfig) -> str:
    """What the pretrained model depends on: the data, the model, the seed and the public settings."""
    fed = config.federation
    identity = {
        "data": dataclasses.asdict(config.data),
        "model": dataclasses.asdict(config.model),
        "seed": config.train.seed,
        "init-model": fed.init_model,
        "public": [
            fed.public_fraction,
            fed.public_corpus,
            fed.pretrain_epochs,
            fed.pretrain_lr,
            fed.pretrain_batch_size,
        ],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pretrained_arrays(config: RunConfig, data, arrays: dict, public: np.ndarray, run_dir: Path) -> dict:
    """`arrays` trained on the public data (`pretrain-epochs`); writes public-model.pt and pretrain.json.
    A run folder that already holds the public model of the same settings (a run stopped before round
    1, or the folder seeded with it) starts from it instead of training it again."""
    fed = config.federation
    key = pretraining_key(config)
    if (run_dir / PUBLIC_MODEL).exists() and (run_dir / PRETRAIN_REPORT).exists():
        kept, _, metadata = load_model(run_dir / PUBLIC_MODEL)
        if metadata.get("pretraining_key") == key:
            log(INFO, "fedseqrec: starting from the public model already in %s", run_dir)
            return kept.arrays()
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    model.load_arrays(arrays)
    sequences, sources = public_sequences(config, data, public)
    validate = None
    if len(public):  # the public cohort's validation items choose the epoch (public data)
        users = public

        def validate(candidate) -> float:
            return evaluate(model_scores(candidate), data, "validation", users=users, top_k=config.train.top_k)[
                f"ndcg@{config.train.top_k}"
            ]

    def on_epoch(row: dict) -> None:
        shown = f"  validation ndcg {row['validation']:.4f}" if "validation" in row else ""
        log(
            INFO,
            "fedseqrec: pretraining epoch %d/%d  loss %.4f%s",
            row["epoch"],
            fed.pretrain_epochs,
            row["loss"],
            shown,
        )

    report = pretrain(
        model,
        sequences,
        epochs=fed.pretrain_epochs,
        lr=fed.pretrain_lr,
        batch_size=fed.pretrain_batch_size,
        max_len=config.data.max_len,
        seed=config.train.seed,
        options=StepOptions(loss=config.model.loss, num_negatives=config.model.num_negatives),
        validate=validate,
        on_epoch=on_epoch,
    )
    report = {"sources": sources, "sequences": len(sequences), **report}
    save_model(run_dir / PUBLIC_MODEL, model, data.item_ids, run_config=config.to_flat(), pretraining_key=key)
    (run_dir / PRETRAIN_REPORT).write_text(json.dumps(report, indent=2))
    log(INFO, "fedseqrec: pretrained on %d public histories, kept epoch %d", len(sequences), report["epoch_kept"])
    return model.arrays()


def public_only_comparison(config: RunConfig, data, released: dict, users: np.ndarray | None, run_dir: Path):
    """The public-only model's test metrics and the released model's paired NDCG gain over it on the
    same test users; None when the run did not pretrain."""
    path = run_dir / PUBLIC_MODEL
    if not path.exists() or data is None:
        return None
    public_model, _, _ = load_model(path)
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids)
    model.load_arrays(released)
    model.eval()
    k = config.train.top_k
    options = dict(top_k=k, mask_seen=config.train.mask_seen, batch_size=config.train.eval_batch_size)
    base, _ = ranked_lists(model_scores(public_model), data, "test", users=users, **options)
    new, _ = ranked_lists(model_scores(model), data, "test", users=users, **options)
    test = ranking_metrics(base, k)  # from the ranks already computed: no second ranking pass
    return {
        "test": {key: test[key] for key in (f"ndcg@{k}", f"hr@{k}") if key in test},
        "released_minus_public_ndcg": paired_gain(base, new, k),
        "sources": json.loads((run_dir / PRETRAIN_REPORT).read_text())["sources"],
    }
